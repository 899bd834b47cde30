-- Drives Neovim like a user, for tests/test_editors.py (`nvim --headless --clean -c 'luafile drive.lua'`): load the README snippet, open a file of a repository, let
-- vim.lsp.inline_completion ask our server, read the ghost text, accept it, type, and read the next ghost text.
-- Input (environment): RC_SNIPPET, RC_CMD (JSON list), RC_FILE, RC_LINE (1-based; the cursor goes to its end),
-- RC_OUT (where the JSON observations go).
local out = { steps = {} }
local function finish(err)
  out.error = err
  local f = assert(io.open(os.getenv('RC_OUT'), 'w'))
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd('qall!')
end
local function step(name) table.insert(out.steps, name) end

-- Wait inside the coroutine, letting Neovim's main loop run meanwhile (typed keys, mode changes, LSP replies).
local co
local function wait_until(cond, timeout)
  local deadline = vim.uv.now() + timeout
  while true do
    local value = cond()
    if value then return value end
    if vim.uv.now() > deadline then return nil end
    vim.defer_fn(function() assert(coroutine.resume(co)) end, 20)
    coroutine.yield()
  end
end
local function type_keys(keys)  -- typed as a user would, handled by the main loop
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), 'nt', false)
end

co = coroutine.create(function() local ok, err = pcall(function()
  vim.cmd('filetype on')
  dofile(os.getenv('RC_SNIPPET'))
  -- The test's server: the same snippet, with the command pointing at the test model, in-file context.
  vim.lsp.config('repocomplete', {
    cmd = vim.json.decode(os.getenv('RC_CMD')),
    init_options = { context = 'infile', maxTokens = 6, debounceMs = 0 },
  })
  vim.cmd.edit(os.getenv('RC_FILE'))
  local buf = vim.api.nvim_get_current_buf()
  assert(wait_until(function() return #vim.lsp.get_clients({ bufnr = buf, name = 'repocomplete' }) > 0 end, 30000),
    'the repocomplete client never attached')
  step('attached')
  local client = vim.lsp.get_clients({ bufnr = buf, name = 'repocomplete' })[1]
  assert(wait_until(function()
    local r = client:request_sync('workspace/executeCommand', { command = 'repocomplete.stats', arguments = {} }, 5000, buf)
    return r and r.result and r.result.state == 'ready'
  end, 60000), 'the server never became ready')
  step('ready')
  assert(vim.lsp.inline_completion.is_enabled({ bufnr = buf }), 'inline completion is not enabled')

  local ns = vim.api.nvim_get_namespaces()['nvim.lsp.inline_completion']
  local function ghost(timeout)
    local text
    wait_until(function()
      local marks = vim.api.nvim_buf_get_extmarks(buf, ns, 0, -1, { details = true })
      if #marks == 0 then return false end
      local parts = {}
      for _, chunk in ipairs(marks[1][4].virt_text or {}) do table.insert(parts, chunk[1]) end
      for _, line in ipairs(marks[1][4].virt_lines or {}) do
        local l = {}
        for _, chunk in ipairs(line) do table.insert(l, chunk[1]) end
        table.insert(parts, '\n' .. table.concat(l))
      end
      text = table.concat(parts)
      return true
    end, timeout)
    return text
  end
  -- Put the cursor at the end of the line and enter insert mode there, as a user typing `A` would.
  local line = tonumber(os.getenv('RC_LINE'))
  vim.api.nvim_win_set_cursor(0, { line, 0 })
  type_keys('A')
  assert(wait_until(function() return vim.api.nvim_get_mode().mode == 'i' end, 5000), 'not in insert mode')
  out.first = ghost(30000)
  assert(out.first, 'no ghost text appeared')
  step('ghost text')

  -- Accept it (what the <Tab> mapping does).
  local before = vim.api.nvim_buf_get_lines(buf, line - 1, line, true)[1]
  assert(vim.lsp.inline_completion.get(), 'nothing to accept')
  assert(wait_until(function() return vim.api.nvim_buf_get_lines(buf, line - 1, line, true)[1] ~= before end, 5000),
    'accepting changed nothing')
  out.line_after_accept = vim.api.nvim_buf_get_lines(buf, line - 1, line, true)[1]
  step('accepted')

  -- Type on a new line below (still in insert mode), and see the next completion.
  type_keys('<CR>x')
  assert(wait_until(function() return vim.api.nvim_win_get_cursor(0)[1] == line + 1 end, 5000), 'typing did nothing')
  local cursor = vim.api.nvim_win_get_cursor(0)
  out.second_line, out.second_col = cursor[1], cursor[2]
  out.second = ghost(30000)
  out.buffer = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, true), '\n')
  step('next ghost text')
end)
finish(not ok and tostring(err) or nil) end)
vim.schedule(function() assert(coroutine.resume(co)) end)
