-- repocomplete in Neovim 0.12+: ghost text through the built-in LSP client (vim.lsp.inline_completion).
vim.lsp.config('repocomplete', {
  cmd = { 'repocomplete', 'serve' },
  filetypes = { 'python', 'javascript', 'typescript', 'typescriptreact', 'javascriptreact', 'go', 'java', 'rust' },
  -- The repository: the nearest version control folder, else the nearest project file.
  root_markers = { { '.git', '.hg', '.svn', '.jj' }, { 'pyproject.toml', 'setup.py', 'setup.cfg', 'package.json',
                                                      'go.mod', 'Cargo.toml', 'pom.xml', 'build.gradle' } },
  -- Server settings (all optional): model, adapter, endpoint, context, contextBudget, maxTokens, multiline, ...
  init_options = { context = 'repo', maxTokens = 64 },
})
vim.lsp.enable('repocomplete')
vim.lsp.inline_completion.enable()
-- <Tab> accepts the suggestion (and is a plain <Tab> when there is none).
vim.keymap.set('i', '<Tab>', function()
  if not vim.lsp.inline_completion.get() then
    return '<Tab>'
  end
end, { expr = true, desc = 'Accept the repocomplete suggestion' })
