"""`eval run --via lsp`: the suite through the real language server, as an editor drives it.

One `repocomplete serve` subprocess per repository (stdio), with the repository as its workspace folder and the
run's settings as initializationOptions (`context`, `contextBudget`, `maxTokens`, `multiline`, `model`, `adapter`,
`debounceMs` = 0); the providers and the model's other options go on its command line. Once the server says it is
ready (the `repocomplete/status` notification, after indexing), each task is: didOpen of the task's buffer under
a file URI in the repository, `textDocument/inlineCompletion` at the cursor, the first item's insertText as the
prediction, didClose.

This measures the editor's path, server included: the server waits for the jedi providers only up to its
deadline, rebuilds the repo map on a worker thread and stops decoding after the runtime's time budget (5 s, with no
`serve` option to change it), so its predictions may differ from `--via engine`'s, which waits for everything. Each
prediction line carries the server's stop reason and engine time (its `repocomplete.stats` command); completions cut
by the time budget are counted in a warning.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from repocomplete.context_engine.errors import InputError
from repocomplete.eval.options import resolve_options
from repocomplete.eval.suites import repo_dir

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # model load + indexing
REQUEST_TIMEOUT_S = 600.0


class ServerError(RuntimeError):
    pass


class JsonRpcClient:
    """A minimal synchronous JSON-RPC client over a subprocess's stdio (LSP framing)."""

    def __init__(self, argv: list[str], cwd: str | None = None):
        self._log = tempfile.TemporaryFile(mode="w+b")
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=cwd)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self.notifications: list[dict] = []
        self.answered: dict[Any, float] = {}  # response id -> perf_counter() when the reader received it
        self._early: dict[Any, dict] = {}  # answers that arrived while another one was awaited
        self._reader = threading.Thread(target=self._read, name="lsp-client-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self.proc.stdout
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    self._messages.put(None)
                    return
                line = line.strip()
                if not line:
                    break
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                continue
            message = json.loads(stream.read(length))
            if isinstance(message, dict) and "id" in message and "method" not in message:
                self.answered[message["id"]] = time.perf_counter()
            self._messages.put(message)

    def _send(self, message: dict) -> None:
        body = json.dumps(message).encode("utf-8")
        try:
            self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise ServerError(f"the server is gone{self.stderr_tail()}") from None

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def request(self, method: str, params: Any, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        return self.response(self.send_request(method, params), timeout, method)

    def send_request(self, method: str, params: Any) -> int:
        """Send a request without waiting for its answer (see `response`)."""
        self._next_id += 1
        self._send({"jsonrpc": "2.0", "id": self._next_id, "method": method, "params": params})
        return self._next_id

    def response(self, msg_id: int, timeout: float = REQUEST_TIMEOUT_S, what: str = "a request") -> Any:
        """The result of a request sent earlier (answers to other requests that arrive meanwhile are kept)."""
        if msg_id in self._early:
            message = self._early.pop(msg_id)
        else:
            while True:
                message = self.wait_for(lambda m: "id" in m and "method" not in m, timeout, what)
                if message["id"] == msg_id:
                    break
                self._early[message["id"]] = message
        if "error" in message:
            raise ServerError(f"{what}: {message['error'].get('message')}")
        return message.get("result")

    def answered_at(self, msg_id: int) -> float:
        return self.answered[msg_id]

    def wait_for(self, match, timeout: float, what: str) -> dict:
        """The next message that `match`es; meanwhile requests from the server are answered, notifications kept."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerError(f"no answer to {what} in {timeout:.0f} s{self.stderr_tail()}")
            try:
                message = self._messages.get(timeout=remaining)
            except queue.Empty:
                continue
            if message is None:
                raise ServerError(f"the server exited (code {self.proc.wait()}) while waiting for {what}"
                                  f"{self.stderr_tail()}")
            if "method" in message and "id" in message:  # a request from the server: configuration, progress
                self._send({"jsonrpc": "2.0", "id": message["id"], "result": None})
                continue
            if "method" in message:
                self.notifications.append(message)
            if match(message):
                return message

    def stderr_tail(self, chars: int = 600) -> str:
        self._log.flush()
        self._log.seek(0)
        text = self._log.read().decode("utf-8", "replace").strip()
        return f"; its stderr ends: {text[-chars:]}" if text else ""

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.request("shutdown", None, timeout=30)
                self.notify("exit", None)
                self.proc.wait(timeout=30)
        except (ServerError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()


def serve_argv(runtime, context, options) -> list[str]:
    """The `repocomplete serve` command line carrying what initializationOptions cannot."""
    options = resolve_options(runtime, context, options)
    server_runtime = runtime.replace(max_new_tokens=options.max_new_tokens, multiline=options.multiline)
    argv = [sys.executable, "-m", "repocomplete", "serve", *server_runtime.to_argv(), "--context", options.context,
            "--budget", str(options.budget), "--providers", ",".join(context.providers)]
    if context.dense:
        argv.append("--dense")
    return argv


def initialization_options(runtime, context, options) -> dict:
    options = resolve_options(runtime, context, options)
    return {
        "context": options.context,
        "contextBudget": options.budget,
        "maxTokens": options.max_new_tokens,
        "multiline": options.multiline,
        "model": runtime.model,
        "adapter": runtime.adapter,
        "debounceMs": 0,
    }


def utf16_position(prompt: str) -> dict:
    """The LSP position (UTF-16 code units, the protocol's default) of the end of `prompt`."""
    line_start = prompt.rfind("\n") + 1
    return {"line": prompt.count("\n"), "character": len(prompt[line_start:].encode("utf-16-le")) // 2}


class LspBatchRunner:
    """BatchRunner's interface over a language server subprocess: one server per repository."""

    def __init__(self, repos: Path, runtime, context, options):
        if options.iterative:
            raise InputError("--via lsp has no --iterative (the server does not offer it)")
        self.repos = Path(repos)
        self.runtime, self.context, self.options = runtime, context, resolve_options(runtime, context, options)
        self.client: JsonRpcClient | None = None
        self._root: Path | None = None

    def _start(self, root: Path) -> JsonRpcClient:
        client = JsonRpcClient(serve_argv(self.runtime, self.context, self.options), cwd=str(root))
        try:
            client.request("initialize", {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
                "capabilities": {"textDocument": {"inlineCompletion": {}}},
                "initializationOptions": initialization_options(self.runtime, self.context, self.options),
            }, timeout=START_TIMEOUT_S)
            client.notify("initialized", {})
            states: list[str] = []

            def ready(message: dict) -> bool:
                if message.get("method") != "repocomplete/status":
                    return False
                state = (message.get("params") or {}).get("state")
                states.append(state)
                if state == "error":
                    raise ServerError(f"the server failed: {message['params'].get('message')}")
                return state == "ready" and "indexing" in states  # the model loaded and the repository indexed

            client.wait_for(ready, START_TIMEOUT_S, "the server's ready status")
        except BaseException:
            client.close()
            raise
        return client

    def run(self, tasks) -> list[dict]:
        if not tasks:
            return []
        root = repo_dir(self.repos, tasks[0]).resolve()
        if self._root != root:
            self.close()
            self.client = self._start(root)
            self._root = root
        records = []
        for t in tasks:
            text, offset = t.buffer()
            uri = (root / t.file).as_uri()
            self.client.notify("textDocument/didOpen", {"textDocument": {
                "uri": uri, "languageId": t.language, "version": 1, "text": text}})
            t0 = time.perf_counter()
            result = self.client.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": uri}, "position": utf16_position(text[:offset]),
                "context": {"triggerKind": 1}})  # 1: invoked
            latency = (time.perf_counter() - t0) * 1000
            self.client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            items = result.get("items", []) if isinstance(result, dict) else (result or [])
            pred = items[0].get("insertText", "") if items else ""
            if isinstance(pred, dict):  # a StringValue snippet
                pred = pred.get("value", "")
            records.append({"task_id": t.task_id, "pred": pred, "latency_ms": round(latency, 1)})
        self._add_server_stats(records)
        return records

    def _add_server_stats(self, records: list[dict]) -> None:
        """The server's own account of each request (stop reason, engine time), from its stats command."""
        stats = self.client.request("workspace/executeCommand",
                                    {"command": "repocomplete.stats", "arguments": [{"reset": True}]})
        served = [r for r in (stats or {}).get("requests", []) if r.get("method") == "textDocument/inlineCompletion"]
        if len(served) != len(records):
            return
        for record, s in zip(records, served):
            record.update(engine_ms=s.get("engine_ms"), stop_reason=s.get("stop_reason"), outcome=s.get("outcome"))
        timed_out = sum(s.get("stop_reason") == "time" for s in served)
        if timed_out:
            log.warning("%d of %d completions stopped on the server's time budget (RuntimeConfig.time_budget_s)",
                        timed_out, len(served))

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
            self._root = None
