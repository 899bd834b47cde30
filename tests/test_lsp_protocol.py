"""End to end: the real `repocomplete serve` subprocess, driven by pytest-lsp's client (and raw bytes for bad input).

The server runs the tiny random-weight model with in-file context where a test compares its answer with the
engine's: the same `Completer`, in this process, must give the same text.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pytest_lsp import ClientServerConfig, client_capabilities

from repocomplete.pipeline import Completer, CompletionOptions
from helpers import write_tree
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import Engine
from repocomplete.model_runtime.loading import load_model

FILES = {
    ".git/HEAD": "ref: refs/heads/main\n",
    "shop/models.py": (
        "class Inventory:\n"
        "    \"\"\"Stock levels by item name.\"\"\"\n\n"
        "    def restock(self, name: str, count: int) -> int:\n"
        "        return count\n"
    ),
    "shop/use.py": "from shop.models import Inventory\n\n\ndef refill(inv: Inventory):\n    total = inv.\n",
}
USE = FILES["shop/use.py"]
CURSOR = types.Position(line=4, character=16)  # after `inv.`


def server_command(model_dir: Path, *extra: str) -> list[str]:
    # Monitors off: the server waits for their analysis an editor's 15 ms, so its answers would depend on how fast
    # jedi is, and the tests compare them with the engine's (`engine_completion`).
    return [sys.executable, "-m", "repocomplete", "serve", "--model", str(model_dir), "--quantize", "none",
            "--device", "cpu", "--monitors", "none", *extra]


def server_env(tmp_path: Path) -> dict[str, str]:
    # The index cache goes to the test's folder, never the user's ~/.cache.
    return {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def repo(tmp_path) -> Path:
    return write_tree(tmp_path / "repo", FILES)


async def start(tmp_path, model_dir, repo, options: dict, progress: bool = True, extra: tuple[str, ...] = ()):
    config = ClientServerConfig(server_command=server_command(model_dir, *extra), server_env=server_env(tmp_path))
    client = await config.start()
    client.set_configuration({"repocomplete": options})
    caps = client_capabilities("neovim")
    caps.window = types.WindowClientCapabilities(work_done_progress=progress)
    folder = types.WorkspaceFolder(uri=repo.as_uri(), name=repo.name)
    result = await client.initialize_session(types.InitializeParams(
        capabilities=caps, workspace_folders=[folder], root_uri=repo.as_uri(), initialization_options=options))
    return client, result


async def wait_ready(client, timeout: float = 60.0) -> dict:
    """Until the model is loaded and the workspace indexed (the server's own account, via repocomplete.stats)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="repocomplete.stats", arguments=[]))
        if stats["state"] in ("ready", "disabled") or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


def open_doc(client, path: Path, text: str, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id="python", version=version, text=text)))
    return uri


async def inline(client, uri: str, position: types.Position):
    return await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


def first_text(answer) -> str:
    """The first inline item's text (the answer is a list of items or an InlineCompletionList)."""
    items = getattr(answer, "items", answer) or []
    return items[0].insert_text if items else ""


def engine_completion(model_dir: Path, tmp_path: Path, path: Path, text: str, offset: int, max_tokens: int) -> str:
    """What the engine gives for the same cursor, in this process (in-file context: no timing in it)."""
    runtime = RuntimeConfig(model=str(model_dir), device="cpu", quantize="none", cache_dir=tmp_path / "mc",
                            max_new_tokens=max_tokens, monitors=())  # as the test servers run (`server_command`)
    completer = Completer(Engine(load_model(runtime), runtime))
    try:
        return completer.complete(str(path), text, offset, CompletionOptions(context="infile")).text
    finally:
        completer.close()


@pytest.mark.asyncio
async def test_a_session_from_initialize_to_exit(tmp_path, tiny_model_dir, repo):
    options = {"context": "infile", "maxTokens": 6, "debounceMs": 0}
    client, result = await start(tmp_path, tiny_model_dir, repo, options)
    try:
        caps = result.capabilities
        assert caps.inline_completion_provider
        assert caps.completion_provider is not None
        assert caps.text_document_sync.change == types.TextDocumentSyncKind.Incremental
        assert "repocomplete.showContext" in caps.execute_command_provider.commands
        stats = await wait_ready(client)
        assert stats["state"] == "ready", stats

        # Indexing was reported as $/progress: begin, reports, end.
        kinds = [r.kind for reports in client.progress_reports.values() for r in reports
                 if hasattr(r, "kind")] or [type(r).__name__ for reports in client.progress_reports.values()
                                             for r in reports]
        assert kinds and "begin" in str(kinds[0]).lower() and "end" in str(kinds[-1]).lower(), kinds

        use = repo / "shop/use.py"
        uri = open_doc(client, use, USE)
        answer = await inline(client, uri, CURSOR)
        expected = engine_completion(tiny_model_dir, tmp_path, use, USE, USE.index("inv.") + 4, 6)
        assert expected, "the test model gave an empty completion here: pick another cursor"
        assert answer == [types.InlineCompletionItem(insert_text=expected, range=types.Range(CURSOR, CURSOR))]

        # Classic completion carries the same text, replacing the word before the cursor (none after `inv.`).
        classic = await client.text_document_completion_async(types.CompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=CURSOR))
        assert classic.is_incomplete and len(classic.items) == 1, classic
        assert classic.items[0].text_edit == types.TextEdit(range=types.Range(CURSOR, CURSOR), new_text=expected)
        # That second request was answered from the cache: it neither waited nor counts as a keystroke that
        # reached the engine (the debounce has seen one engine request, so no gap between two).
        stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="repocomplete.stats", arguments=[]))
        last = stats["requests"][-1]
        assert last["outcome"] == "cached" and last["debounce_ms"] == 0, last
        assert stats["debounce"]["gaps"] == 0, stats["debounce"]

        # An incremental change: type "re" after `inv.`; the next completion is the engine's for the new text.
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=CURSOR, end=CURSOR), text="re")]))
        changed = USE.replace("inv.\n", "inv.re\n")
        answer = await inline(client, uri, types.Position(line=4, character=18))
        expected = engine_completion(tiny_model_dir, tmp_path, use, changed, changed.index("inv.re") + 6, 6)
        assert expected and first_text(answer) == expected
        # showContext on the completion just made: its prompt's token provenance, ending in the generated tail.
        made = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command="repocomplete.showContext",
            arguments=[{"uri": uri, "position": {"line": 4, "character": 18}}]))
        kinds = [span["kind"] for span in made["prompt_spans"]]
        assert made["completion"] == expected and "prefix" in kinds and kinds[-1] == "generated", made
        assert made["prompt_spans"][-1]["start"] == made["prompt_tokens"]
        # The slab reserves its bound; its memory is the rows written.
        memory = (await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="repocomplete.stats", arguments=[])))["memory"]
        rows, bound = memory["slab_rows"]
        assert 0 < rows < bound and 0 < memory["slab_bytes"] < memory["slab_reserved_bytes"]
        assert memory["slab_reserved_bytes"] * rows == memory["slab_bytes"] * bound

        # showContext: the context and provenance for that position, with repository context on.
        client.set_configuration({"repocomplete": {**options, "context": "repo"}})
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={}))
        await asyncio.sleep(0.3)
        shown = await client.workspace_execute_command_async(types.ExecuteCommandParams(
            command="repocomplete.showContext",
            arguments=[{"uri": uri, "position": {"line": 4, "character": 18}}]))
        assert any(r["path"] == "shop/models.py" and "Inventory" in r["text"] for r in shown["records"]), shown
        assert all({"path", "start_line", "end_line", "kind", "why"} <= set(r) for r in shown["records"])
        assert (shown["root"], shown["root_reason"]) == (str(repo.resolve()), "the editor's workspace folder")

        # A configuration change is honoured: disabled means no completions.
        client.set_configuration({"repocomplete": {**options, "enabled": False}})
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={}))
        await asyncio.sleep(0.3)
        assert not await inline(client, uri, types.Position(line=4, character=18))
    finally:
        server = client._server
        await client.shutdown_session()
    # shutdown, then exit: the process ends on its own with code 0.
    assert await asyncio.wait_for(server.wait(), 20) == 0


@pytest.mark.asyncio
async def test_candidates_are_separate_inline_items(tmp_path, tiny_model_dir, repo):
    """With `candidates` set, each distinct candidate is an item of its own (the editor cycles through them), the
    first being the one completion the engine gives without it. The others are sampled: from the random test model's
    near-flat distribution a sample moves with the last bits of the logits (thread count, cached or fresh prefill),
    so they are checked for what the server promises (distinct, non-empty, at the cursor), not for exact text."""
    options = {"context": "infile", "maxTokens": 6, "debounceMs": 0, "candidates": 3}
    client, _ = await start(tmp_path, tiny_model_dir, repo, options)
    try:
        assert (await wait_ready(client))["state"] == "ready"
        use = repo / "shop/use.py"
        uri = open_doc(client, use, USE)
        answer = await inline(client, uri, CURSOR)
        assert 1 < len(answer) <= 3, answer
        assert answer[0].insert_text == engine_completion(tiny_model_dir, tmp_path, use, USE, USE.index("inv.") + 4, 6)
        texts = [item.insert_text for item in answer]
        assert len(set(texts)) == len(texts) and all(t.strip() for t in texts), texts
        assert all(item.range == types.Range(CURSOR, CURSOR) for item in answer)
        # From the cache, the same items.
        assert await inline(client, uri, CURSOR) == answer
    finally:
        await client.shutdown_session()


@pytest.mark.asyncio
async def test_cancel_and_a_newer_request_stop_the_engine(tmp_path, tiny_model_dir, repo):
    # Long generations (no stop at the end of line, many tokens, and none at a loop: the random model falls into
    # one), so that each request would run for seconds.
    options = {"context": "infile", "maxTokens": 2000, "multiline": True, "debounceMs": 0}
    client, _ = await start(tmp_path, tiny_model_dir, repo, options, extra=("--no-stop-loops",))
    try:
        assert (await wait_ready(client))["state"] == "ready"
        uri = open_doc(client, repo / "shop/use.py", USE)
        # $/cancelRequest for a request the engine is working on.
        params = types.InlineCompletionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), position=CURSOR,
            context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))
        first = asyncio.ensure_future(client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="to-cancel"))
        await asyncio.sleep(0.5)
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="to-cancel"))
        try:
            await asyncio.wait_for(first, 30)  # an empty answer, or the RequestCancelled error
        except Exception as e:
            assert "cancel" in str(e).lower(), e
        # A newer request for the same document supersedes the older one.
        older = asyncio.ensure_future(inline(client, uri, CURSOR))
        await asyncio.sleep(0.5)
        newer = asyncio.ensure_future(inline(client, uri, types.Position(line=4, character=4)))
        for fut in (older, newer):
            await asyncio.wait_for(fut, 30)
        stats = await client.workspace_execute_command_async(
            types.ExecuteCommandParams(command="repocomplete.stats", arguments=[]))
        outcomes = [r["outcome"] for r in stats["requests"]]
        assert outcomes[:2] == ["cancelled", "superseded"], stats["requests"]
        for r in stats["requests"]:
            if r["outcome"] in ("cancelled", "superseded"):
                # The engine stopped within a few decode steps, not after 2000 tokens.
                ran = r["ran_after_cancel_ms"] if r["outcome"] == "cancelled" else r["ran_after_superseded_ms"]
                assert ran is not None and ran < 1000, r
                assert r["total_ms"] < 10_000, r
    finally:
        await client.shutdown_session()


# ---------------------------------------------------------------------------------------------------------------
# Bad input, as raw bytes over stdin.


AUTO = {"triggerKind": 2}  # InlineCompletionTriggerKind.Automatic


class RawClient:
    def __init__(self, cmd: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env)
        self.buffer = b""
        self.next_id = 1

    def send_bytes(self, data: bytes) -> None:
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, message: dict) -> None:
        body = json.dumps(message).encode()
        self.send_bytes(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def request(self, method: str, params) -> int:
        msg_id, self.next_id = self.next_id, self.next_id + 1
        self.send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return msg_id

    def notify(self, method: str, params) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def read_message(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while True:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if sep:
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                if len(rest) >= length:
                    self.buffer = rest[length:]
                    return json.loads(rest[:length])
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no message from the server")
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError(f"server closed stdout (exit {self.proc.poll()})")
                self.buffer += chunk

    def response(self, msg_id, timeout: float = 60.0) -> dict:
        """The response to a request; requests from the server get an empty answer, notifications are dropped."""
        while True:
            msg = self.read_message(timeout)
            if msg.get("id") == msg_id and "method" not in msg:
                return msg
            if "method" in msg and "id" in msg:
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})


def test_bad_input_is_answered_or_ignored_and_the_server_keeps_serving(tmp_path, tiny_model_dir, repo):
    client = RawClient(server_command(tiny_model_dir), server_env(tmp_path))
    try:
        init = client.request("initialize", {"processId": None, "rootUri": repo.as_uri(), "capabilities": {},
                                             "initializationOptions": {"context": "infile", "maxTokens": 4,
                                                                       "debounceMs": 0}})
        assert "capabilities" in client.response(init)["result"]
        client.notify("initialized", {})
        use = repo / "shop/use.py"
        uri = use.as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": USE}})

        # Garbage bytes, a header with a bad Content-Length, a body that is not JSON.
        client.send_bytes(b"\x00\xff garbage without headers\r\n\r\n")
        client.send_bytes(b"Content-Length: banana\r\n\r\n{}")
        client.send_bytes(b"Content-Length: 9\r\n\r\n{not json")
        # A request with params of the wrong types.
        bad = client.request("textDocument/inlineCompletion", {"textDocument": {"uri": 42}, "position": "here"})
        assert client.response(bad)["error"]["code"] == -32602
        # An unknown method: a request gets MethodNotFound, a notification is ignored.
        unknown = client.request("repocomplete/noSuchMethod", {})
        assert client.response(unknown)["error"]["code"] == -32601
        client.notify("repocomplete/noSuchNotification", {"x": 1})
        # A position past the end of the document.
        past = client.request("textDocument/inlineCompletion",
                              {"textDocument": {"uri": uri}, "position": {"line": 999, "character": 0}, "context": AUTO})
        answer = client.response(past)
        assert answer["error"]["code"] == -32602 and "999" in answer["error"]["message"], answer
        # A 10 MB document, and a binary one: completions there are refused or empty, never a crash.
        big_uri = (repo / "big.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": big_uri, "languageId": "python", "version": 1,
                                                                "text": "x = 1\n" * (10 * 2**20 // 6)}})
        big = client.request("textDocument/inlineCompletion",
                             {"textDocument": {"uri": big_uri}, "position": {"line": 3, "character": 5}, "context": AUTO})
        answer = client.response(big, timeout=120)
        assert "result" in answer, answer  # in-file context only there, but an answer
        bin_uri = (repo / "blob.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": bin_uri, "languageId": "python", "version": 1,
                                                                "text": "\x00\x01\x02binary\x00"}})
        blob = client.request("textDocument/inlineCompletion",
                              {"textDocument": {"uri": bin_uri}, "position": {"line": 0, "character": 3}, "context": AUTO})
        assert not client.response(blob).get("result")
        # A flood of didChange and of cancels (for requests that exist and that do not).
        for v in range(2, 302):  # type "x", delete it, 150 times over: the text ends as it began
            end = 16 if v % 2 == 0 else 17
            client.notify("textDocument/didChange", {
                "textDocument": {"uri": uri, "version": v},
                "contentChanges": [{"range": {"start": {"line": 4, "character": 16}, "end": {"line": 4, "character": end}},
                                    "text": "x" if v % 2 == 0 else ""}]})
            client.notify("$/cancelRequest", {"id": 10_000 + v})
        # ... and after all that, a normal completion succeeds.
        deadline = time.monotonic() + 60
        while True:
            ok = client.request("textDocument/inlineCompletion",
                                {"textDocument": {"uri": uri}, "position": {"line": 4, "character": 16},
                                 "context": AUTO})
            answer = client.response(ok)
            assert "error" not in answer, answer
            if answer.get("result") is not None or time.monotonic() > deadline:
                break  # None while the model still loads
            time.sleep(0.2)
        expected = engine_completion(tiny_model_dir, tmp_path, use, USE, USE.index("inv.") + 4, 4)
        assert expected, "the test model gave an empty completion here: pick another cursor"
        assert answer["result"] == [{"insertText": expected, "range": {"start": {"line": 4, "character": 16},
                                                                       "end": {"line": 4, "character": 16}}}]
        assert client.proc.poll() is None  # still serving
    finally:
        # A client that vanishes: stdin closed without shutdown/exit. The server exits on its own, promptly.
        client.proc.stdin.close()
        try:
            code = client.proc.wait(timeout=20)
        finally:
            if client.proc.poll() is None:
                client.proc.kill()
        stderr = client.proc.stderr.read().decode(errors="replace")
    assert code == 0, stderr[-3000:]  # the end of its input is a clean end
    assert "Traceback" not in stderr, stderr[-3000:]


def test_tcp_serves_one_client_then_exits(tmp_path, tiny_model_dir, repo):
    import re
    import socket

    proc = subprocess.Popen(server_command(tiny_model_dir, "--tcp", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=server_env(tmp_path))
    try:
        line = ""
        deadline = time.monotonic() + 60
        while "serving LSP on" not in line and time.monotonic() < deadline:
            line = proc.stderr.readline()
        port = int(re.search(r"serving LSP on [\d.]+:(\d+)", line).group(1))
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                           "params": {"processId": None, "rootUri": repo.as_uri(), "capabilities": {}}}).encode()
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        data = b""
        while b'"capabilities"' not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert b'"inlineCompletionProvider"' in data
        sock.close()  # the client's end ends the server
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.asyncio
async def test_workspace_folders_and_saves_reach_the_index(tmp_path, tiny_model_dir, repo):
    other = write_tree(tmp_path / "other", {".git/HEAD": "x\n", "billing/tax.py": "def vat_rate(country):\n    return 0.2\n"})
    client, _ = await start(tmp_path, tiny_model_dir, repo, {"context": "repo", "maxTokens": 2, "debounceMs": 0})
    try:
        assert (await wait_ready(client))["state"] == "ready"
        client.workspace_did_change_workspace_folders(types.DidChangeWorkspaceFoldersParams(
            event=types.WorkspaceFoldersChangeEvent(
                added=[types.WorkspaceFolder(uri=other.as_uri(), name="other")], removed=[])))
        text = "from billing.tax import vat_rate\n\n\ndef total(x):\n    return x * vat_rate(\n"
        (other / "billing/cart.py").write_text(text)
        uri = open_doc(client, other / "billing/cart.py", text)
        shown = None
        for _ in range(100):  # the new folder is indexed on the engine thread
            shown = await client.workspace_execute_command_async(types.ExecuteCommandParams(
                command="repocomplete.showContext", arguments=[{"uri": uri, "position": {"line": 4, "character": 24}}]))
            if any(r["path"] == "billing/tax.py" for r in shown["records"]):
                break
            await asyncio.sleep(0.2)
        assert any(r["path"] == "billing/tax.py" for r in shown["records"]), shown
        # A file saved with new content: the index follows (didSave).
        (repo / "shop/models.py").write_text(FILES["shop/models.py"] + "\n\ndef audit_stock(inv):\n    return inv\n")
        client.text_document_did_save(types.DidSaveTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=(repo / "shop/models.py").as_uri())))
        use_uri = open_doc(client, repo / "shop/use.py", USE + "    audit_stock(\n")
        for _ in range(100):
            shown = await client.workspace_execute_command_async(types.ExecuteCommandParams(
                command="repocomplete.showContext",
                arguments=[{"uri": use_uri, "position": {"line": 5, "character": 16}}]))
            if any("audit_stock" in r["text"] for r in shown["records"]):
                break
            await asyncio.sleep(0.2)
        assert any("audit_stock" in r["text"] for r in shown["records"]), shown
    finally:
        await client.shutdown_session()
