"""The server's life under stress, end to end: hostile files do not stall it, `shutdown` is answered at once even
while it indexes, `exit` is clean, and no child process outlives it, however it ends."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from helpers import child_pids, hostile_files, wait_gone, write_tree
from test_lsp_protocol import RawClient, server_command, server_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def start(tmp_path: Path, model_dir: Path, root: Path, options: dict) -> RawClient:
    client = RawClient(server_command(model_dir), server_env(tmp_path))
    init = client.request("initialize", {"processId": None, "rootUri": root.as_uri(), "capabilities": {},
                                         "initializationOptions": {"maxTokens": 4, "debounceMs": 0, **options}})
    assert "capabilities" in client.response(init)["result"]
    client.notify("initialized", {})
    return client


def wait_status(client: RawClient, done, timeout: float = 120.0) -> dict:
    """Read messages until a repocomplete/status notification satisfies `done` (answering server requests)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = client.read_message(max(0.1, deadline - time.monotonic()))
        if "method" in msg and "id" in msg:
            client.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
        elif msg.get("method") == "repocomplete/status" and done(msg["params"]):
            return msg["params"]


def finish(client: RawClient, timeout: float = 20.0) -> tuple[int | None, str]:
    try:
        code = client.proc.wait(timeout)
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait()
    return code, client.proc.stderr.read().decode(errors="replace")


def indexing_server(tmp_path: Path, model_dir: Path) -> RawClient:
    """A server busy indexing a tree of 3000 files."""
    files = {f"pkg{i // 100}/m{i}.py": f"def f{i}(a):\n    return a + {i}\n" * 20 for i in range(3000)}
    root = write_tree(tmp_path / "big", {".git/HEAD": "ref: refs/heads/main\n", **files})
    client = start(tmp_path, model_dir, root, {"context": "repo"})
    try:
        wait_status(client, lambda s: s["state"] == "indexing" and (s.get("percentage") or 0) > 0)
    except BaseException:
        finish(client, timeout=0.1)
        raise
    return client


def test_shutdown_while_indexing_is_answered_at_once_and_exit_is_clean(tmp_path, tiny_model_dir):
    client = indexing_server(tmp_path, tiny_model_dir)
    try:
        t0 = time.monotonic()
        answer = client.response(client.request("shutdown", None), timeout=30)
        assert answer.get("result", "missing") is None, answer
        assert time.monotonic() - t0 < 1.0  # not after the indexing: it stops at its next file
        client.notify("exit", None)
    finally:
        code, stderr = finish(client)
    assert code == 0, stderr[-3000:]  # exit after shutdown
    assert "Traceback" not in stderr, stderr[-3000:]


def test_exit_without_shutdown_while_indexing_ends_with_code_1(tmp_path, tiny_model_dir):
    client = indexing_server(tmp_path, tiny_model_dir)
    try:
        client.notify("exit", None)
    finally:
        code, stderr = finish(client)
    assert code == 1, stderr[-3000:]  # exit without shutdown, as LSP says
    assert "Traceback" not in stderr, stderr[-3000:]


def test_hostile_files_do_not_stall_the_server_and_a_killed_server_leaves_no_orphan(tmp_path, tiny_model_dir):
    hostile = hostile_files()
    normal = "from util import helper\n\n\ndef run(a):\n    return helper(a, 2)\n\n\nvalue = run(1)\nvalue.\n"
    root = write_tree(tmp_path / "repo", {".git/HEAD": "ref: refs/heads/main\n", **hostile, "main.py": normal,
                                          "util.py": "def helper(a, b):\n    return a + b\n"})
    client = start(tmp_path, tiny_model_dir, root, {"context": "repo"})
    try:
        wait_status(client, lambda s: s["state"] == "ready")
        for name, text in hostile.items():  # the hostile files open in the editor
            client.notify("textDocument/didOpen", {"textDocument": {"uri": (root / name).as_uri(),
                                                                    "languageId": "python", "version": 1,
                                                                    "text": text}})
        hostile_uri = (root / "unclosed.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": (root / "main.py").as_uri(),
                                                                "languageId": "python", "version": 1, "text": normal}})
        for uri, position in [(hostile_uri, {"line": 1000, "character": 50}),
                              ((root / "oneline.py").as_uri(), {"line": 0, "character": 500_000}),
                              ((root / "main.py").as_uri(), {"line": 8, "character": 6})]:
            t0 = time.monotonic()
            answer = client.response(client.request("workspace/executeCommand", {
                "command": "repocomplete.showContext", "arguments": [{"uri": uri, "position": position}]}), 60)
            assert "result" in answer, answer
            assert time.monotonic() - t0 < 15, uri  # before: a minute and more
        shown = answer["result"]["records"]
        assert any(r["path"] == "util.py" for r in shown), shown  # the normal file still gets its context
        workers = child_pids(client.proc.pid)
        assert workers, "no jedi worker process was started"
        client.proc.send_signal(signal.SIGKILL)  # the client kills the server: nothing of it may stay behind
        client.proc.wait(10)
        assert not wait_gone(workers, 2.0), "orphaned child processes"
    finally:
        finish(client)
