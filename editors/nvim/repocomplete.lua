-- repocomplete in Neovim 0.12+: ghost text through the built-in LSP client (vim.lsp.inline_completion).
vim.lsp.config('repocomplete', {
  cmd = { 'repocomplete', 'serve' },
  filetypes = { 'python', 'javascript', 'typescript', 'typescriptreact', 'javascriptreact', 'go', 'java', 'rust' },
  root_markers = { '.git' },
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
