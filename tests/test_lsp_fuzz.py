"""A seeded fuzz of the real server: 1000 hostile JSON-RPC messages, then a normal completion and a clean exit.

The messages (`hostile_messages`, the same for a seed): bodies that are not JSON or not JSON-RPC, every method the
server handles with params of the wrong types, unknown methods, positions huge, negative, fractional or NaN, text
with lone surrogates and NUL bytes, bytes that are not UTF-8, oversized headers and wrong Content-Lengths,
notifications carrying ids and requests without, edits out of version order and to documents never opened,
responses to requests never made (and to the client's own requests in flight), floods of cancels. Nothing in them
changes what the final completion depends on (no valid setting, no shutdown or exit, no folder that exists).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import threading
import time
from pathlib import Path

import pytest

from repocomplete.context_engine.config import ContextConfig
from repocomplete.lsp_server.config import Settings
from repocomplete.lsp_server.handlers import make_server
from repocomplete.model_runtime.config import RuntimeConfig
from test_lsp_protocol import AUTO, USE, RawClient, engine_completion, repo, server_command, server_env  # noqa: F401

SEED = 12
COUNT = 1000
METHODS = (  # every method the server handles, but shutdown and exit (they would end the session)
    "initialize", "initialized", "textDocument/didOpen", "textDocument/didChange", "textDocument/didClose",
    "textDocument/didSave", "workspace/didChangeConfiguration", "workspace/didChangeWorkspaceFolders",
    "textDocument/inlineCompletion", "textDocument/completion", "workspace/executeCommand", "$/cancelRequest",
    "$/setTrace",
)
REQUESTS = {"initialize", "textDocument/inlineCompletion", "textDocument/completion", "workspace/executeCommand"}


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


class Fuzz:
    """The generator of hostile messages: each `message()` is the bytes of one message (framed or not)."""

    def __init__(self, seed: int, repo: Path):
        self.rng = random.Random(seed)
        self.repo = repo
        self.uris = [(repo / "shop/use.py").as_uri(), (repo / "shop/models.py").as_uri(), (repo / "fuzz.py").as_uri(),
                     (repo / "nowhere/deep.py").as_uri(), "untitled:Untitled-1", "file:///", "",
                     (repo / "../../etc/passwd").as_uri(), "file:///dev/zero", "http://example.invalid/x.py",
                     "file:///%ZZ%00bad", "\ud800"]
        self.next_id = 100_000
        self.sent_ids: list = []
        self.may_be_lost: set = set()  # requests right after a framing attack (it may swallow them)
        self._after_attack = False

    # -- values ------------------------------------------------------------------------------------------------

    def junk(self, depth: int = 0):
        """A value of any JSON type (and NaN, infinities, huge numbers, lone surrogates)."""
        r = self.rng
        kind = r.randrange(12 if depth < 2 else 9)
        if kind < 9:
            return [None, True, -1, 2**63, 1e308, math.nan, -math.inf, 0.5,
                    r.choice(["", "x", "\ud800", "é" * 50, "\x00"])][kind]
        if kind == 9:
            return [self.junk(depth + 1) for _ in range(r.randrange(3))]
        if kind == 10:
            return {r.choice(["uri", "line", "text", "position", "x"]): self.junk(depth + 1) for _ in range(r.randrange(3))}
        return {"line": self.junk(depth + 1), "character": self.junk(depth + 1)}

    def number(self):
        r = self.rng
        return r.choice([0, 1, 4, 16, -1, -(2**31), 2**31, 2**63, 10**30, 1.5, math.nan, math.inf, "3", None, True])

    def position(self):
        if self.rng.random() < 0.2:
            return self.junk()
        return {"line": self.number(), "character": self.number()}

    def range_(self):
        if self.rng.random() < 0.2:
            return self.junk()
        return {"start": self.position(), "end": self.position()}

    def uri(self):
        return self.rng.choice(self.uris) if self.rng.random() < 0.9 else self.junk()

    def text(self):
        r = self.rng
        return r.choice(["", "x", "def f(:\n", "\x00\x01binary", "\ud800\udfff\ud800", "é😀\r\n" * 30,
                         "import os\n" * r.randrange(1, 400), USE, self.junk()])

    def doc_id(self):
        return {"uri": self.uri(), "version": self.number()} if self.rng.random() < 0.8 else self.junk()

    def params(self, method: str):
        """Params for `method`, each field of the wrong type or out of range with some probability."""
        r = self.rng
        if r.random() < 0.15:
            return self.junk()
        maybe = lambda good, p=0.5: good if r.random() < p else self.junk()  # noqa: E731
        if method == "initialize":
            return {"processId": maybe(None), "rootUri": maybe(self.uri()), "capabilities": maybe({}),
                    "initializationOptions": maybe({"maxTokens": "many", "context": 3}),
                    "workspaceFolders": maybe([{"uri": self.uri(), "name": self.junk()}])}
        if method == "textDocument/didOpen":
            return {"textDocument": maybe({"uri": self.uri(), "languageId": maybe("python", 0.8),
                                           "version": self.number(), "text": self.text()}, 0.8)}
        if method == "textDocument/didChange":
            change = r.choice([{"range": self.range_(), "text": self.text()}, {"text": self.text()},
                               {"range": self.range_(), "rangeLength": self.number(), "text": self.text()}, self.junk()])
            return {"textDocument": self.doc_id(), "contentChanges": maybe([change] * r.randrange(1, 3), 0.8)}
        if method in ("textDocument/didClose", "textDocument/didSave"):
            return {"textDocument": maybe({"uri": self.uri()}, 0.8), "text": self.junk()}
        if method == "workspace/didChangeConfiguration":  # invalid values only: none may change a setting
            return {"settings": r.choice([{"repocomplete": {"maxTokens": "x", "enabled": 3, "colour": 1}},
                                          {"context": 5, "languages": "python", "model": ""}, {"debounceMs": -1},
                                          {"maxTokens": math.nan}, {"completionCacheBytes": -5}, self.junk()])}
        if method == "workspace/didChangeWorkspaceFolders":  # folders that do not exist
            folder = {"uri": (self.repo / f"missing{r.randrange(3)}").as_uri(), "name": self.junk()}
            return {"event": maybe({"added": maybe([folder]), "removed": maybe([folder])}, 0.7)}
        if method in ("textDocument/inlineCompletion", "textDocument/completion"):
            return {"textDocument": maybe({"uri": self.uri()}, 0.8), "position": self.position(),
                    "context": maybe(AUTO, 0.7)}
        if method == "workspace/executeCommand":
            command = r.choice(["repocomplete.showContext", "repocomplete.stats", "repocomplete.nope", self.junk()])
            args = r.choice([[{"uri": self.uri(), "position": self.position()}], [{"reset": self.junk()}], [],
                             self.junk()])
            return {"command": command, "arguments": args}
        if method == "$/cancelRequest":
            return {"id": r.choice(self.sent_ids[-20:] or [1]) if r.random() < 0.6 else self.junk()}
        if method == "$/setTrace":
            return {"value": r.choice(["off", "verbose", self.junk()])}
        return self.junk()

    # -- messages ----------------------------------------------------------------------------------------------

    def message(self) -> bytes:
        """One hostile message (a few for the floods)."""
        data, attack = self._message()
        self._after_attack = attack
        return data

    def _message(self) -> tuple[bytes, bool]:
        out, attack = self._content(), False
        if out is None:
            out, attack = self._framing(), True
        return out, attack

    def _content(self) -> bytes | None:
        r = self.rng
        roll = r.random()
        if roll < 0.55:  # a method the server handles, its params hostile; ids where a notification has none
            method = r.choice(METHODS)
            msg = {"jsonrpc": "2.0", "method": method, "params": self.params(method)}
            wants_id = (method in REQUESTS) != (r.random() < 0.15)  # sometimes a notification with an id, and back
            if wants_id:
                msg["id"] = self.fresh_id()
            return self.encode(msg)
        if roll < 0.62:  # valid edits out of version order (the text stays sane: a full replace)
            return self.encode({"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {
                "textDocument": {"uri": self.uris[r.randrange(3)], "version": r.choice([-5, 0, 3, 2, 10**9])},
                "contentChanges": [{"text": r.choice([USE, "x = 1\n", ""])}]}})
        if roll < 0.70:  # a cancel flood
            return b"".join(self.encode({"jsonrpc": "2.0", "method": "$/cancelRequest",
                                         "params": {"id": r.choice([*self.sent_ids[-5:], 7, "x", None, 1.5])}})
                            for _ in range(r.randrange(1, 20)))
        if roll < 0.76:  # unknown methods, as requests and notifications
            msg = {"jsonrpc": "2.0", "method": r.choice(["foo/bar", "$/unknown", "", "textDocument/hover",
                                                        "repocomplete/status"]), "params": self.junk()}
            if r.random() < 0.5:
                msg["id"] = self.fresh_id()
            return self.encode(msg)
        if roll < 0.79:  # a request, then a response carrying its id (pygls keeps both in one table)
            msg_id = self.fresh_id()
            return self.encode({"jsonrpc": "2.0", "id": msg_id, "method": "textDocument/inlineCompletion", "params": {
                "textDocument": {"uri": self.uris[0]}, "position": {"line": 0, "character": 0}, "context": AUTO}}) + \
                self.encode({"jsonrpc": "2.0", "id": msg_id, "result": None})
        if roll < 0.82:  # responses nobody asked for
            msg = {"jsonrpc": "2.0", "id": r.choice([*self.sent_ids[-5:], 424242, "srv-1", None])}
            msg.update(r.choice([{"result": self.junk()}, {"error": self.junk()}, {"error": {"code": 1, "message": "m"}},
                                 {}]))
            return self.encode(msg)
        if roll < 0.90:  # not JSON-RPC: bad JSON, other JSON, bad envelopes, not UTF-8
            body = r.choice([b"{", b"[]", b"null", b"42", b'"s"', b"[{\"jsonrpc\": \"2.0\", \"method\": \"x\"}]",
                             b'{"jsonrpc": "1.0", "id": 1, "method": "initialize"}', b'{"id": {"a": 1}, "method": "x"}',
                             b'{"jsonrpc": "2.0", "id": true, "method": "x"}', b'{"jsonrpc": "2.0", "method": 5}',
                             b'{"jsonrpc": "2.0", "method": "x", "params": 5}', b'{"jsonrpc": "2.0"}',
                             b'{"jsonrpc": "2.0", "id": 3}', b"\xff\xfe\x00garbage", b'{"a": "\xc3\x28"}',
                             b'{"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": '
                             b'{"uri": "file:///x.py", "languageId": "python", "version": 1, "text": "\xed\xa0\x80"}}}',
                             b"{" * 100_000, bytes(r.randrange(256) for _ in range(200))])
            return frame(body)
        return None

    def _framing(self) -> bytes:
        """Framing attacks: oversized headers, bad or missing Content-Length, bodies shorter than announced."""
        return self.rng.choice([
            b"Content-Length: 10\r\nX-Junk: " + b"a" * 70_000 + b"\r\n\r\n0123456789",
            b"X-Only: header\r\n\r\n",
            b"Content-Length: -5\r\n\r\n{}",
            b"Content-Length: 99999999999999999999\r\n\r\n{}",
            b"Content-Length: 300000000\r\n\r\n{}",
            b"Content-Type: application/json\r\n\r\n{}",
            b"Content-Length: 40\r\n\r\n" + json.dumps({"jsonrpc": "2.0", "method": "x"}).encode(),
            b"garbage between messages\r\n",
            b"\x00" * 70_000,
            b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        ])

    def fresh_id(self):
        self.next_id += 1
        msg_id = self.next_id if self.rng.random() < 0.7 else f"s{self.next_id}"
        self.sent_ids.append(msg_id)
        if self._after_attack:
            self.may_be_lost.add(msg_id)
        return msg_id

    def encode(self, msg: dict) -> bytes:
        # NaN and infinities as Python writes them (JSON has none), lone surrogates as \\ud800 escapes.
        return frame(json.dumps(msg).encode())


def hostile_messages(seed: int, repo: Path, count: int = COUNT) -> list[bytes]:
    fuzz = Fuzz(seed, repo)
    return [fuzz.message() for _ in range(count)]


class Session(RawClient):
    """A RawClient whose stdout and stderr are drained by threads (a server never blocks on a full pipe), answering
    the server's own requests with null."""

    def __init__(self, cmd, env):
        super().__init__(cmd, env)
        self.lock = threading.Lock()
        self.messages: list[dict] = []
        self.cond = threading.Condition()
        self.stderr = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self) -> None:
        while chunk := self.proc.stderr.read1(65536):
            self.stderr += chunk

    def send_bytes(self, data: bytes) -> None:
        with self.lock:
            super().send_bytes(data)

    def _drain(self) -> None:
        while True:
            try:
                msg = RawClient.read_message(self, timeout=3600)
            except (EOFError, TimeoutError, OSError, ValueError):
                return
            if "method" in msg and "id" in msg:
                self.send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

    def response(self, msg_id, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for msg in self.messages:
                    if msg.get("id") == msg_id and "method" not in msg:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no response to {msg_id!r} (exit {self.proc.poll()})")
                self.cond.wait(left)

    def answered(self) -> set:
        with self.cond:
            return {json.dumps(m["id"]) for m in self.messages if "id" in m and "method" not in m}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start_session(tmp_path, model_dir, repo) -> Session:
    client = Session(server_command(model_dir), server_env(tmp_path))
    init = client.request("initialize", {"processId": None, "rootUri": repo.as_uri(), "capabilities": {},
                                         "initializationOptions": {"context": "infile", "maxTokens": 4,
                                                                   "debounceMs": 0}})
    assert "capabilities" in client.response(init, timeout=60)["result"]
    client.notify("initialized", {})
    return client


def complete_use(client: Session, repo: Path, timeout: float = 30.0) -> dict:
    """(Re)open shop/use.py as the test expects it and complete after `inv.` until the model has loaded."""
    uri = (repo / "shop/use.py").as_uri()
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": USE}})
    deadline = time.monotonic() + timeout
    while True:
        msg_id = client.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": 4, "character": 16}, "context": AUTO})
        answer = client.response(msg_id, timeout=5)
        if "error" in answer or answer.get("result") is not None or time.monotonic() > deadline:
            return answer
        time.sleep(0.1)  # None while the model still loads


def finish(client: Session) -> tuple[int, str]:
    """shutdown + exit; the exit code and stderr."""
    try:
        client.response(client.request("shutdown", None), timeout=20)
        client.notify("exit", None)
        code = client.proc.wait(timeout=20)
    finally:
        if client.proc.poll() is None:
            client.proc.kill()
        client._stderr_thread.join(5)
    return code, client.stderr.decode(errors="replace")


def test_the_fuzz_is_seeded():
    repo = Path("/nonexistent/repo")
    assert hostile_messages(SEED, repo, 50) == hostile_messages(SEED, repo, 50)
    assert hostile_messages(SEED, repo, 50) != hostile_messages(SEED + 1, repo, 50)


def test_a_thousand_hostile_messages_then_a_normal_completion(tmp_path, tiny_model_dir, repo):
    client = start_session(tmp_path, tiny_model_dir, repo)
    try:
        fuzz = Fuzz(SEED, repo)
        for _ in range(COUNT):
            client.send_bytes(fuzz.message())
        # Alive and back in step (a Content-Length longer than its body may swallow what follows it for a while).
        deadline = time.monotonic() + 20
        while True:
            try:
                stats = client.response(client.request("workspace/executeCommand",
                                                       {"command": "repocomplete.stats", "arguments": []}), timeout=1)
                break
            except TimeoutError:
                assert time.monotonic() < deadline and client.proc.poll() is None, "the server stopped answering"
        assert stats["result"]["worker_alive"], stats
        answer = complete_use(client, repo)
        expected = engine_completion(tiny_model_dir, tmp_path, repo / "shop/use.py", USE, USE.index("inv.") + 4, 4)
        assert expected, "the test model gave an empty completion here: pick another cursor"
        assert answer.get("result") == [{"insertText": expected, "range": {"start": {"line": 4, "character": 16},
                                                                           "end": {"line": 4, "character": 16}}}], answer
        # Every request of the fuzz was answered (none hangs), but those a framing attack just before may swallow.
        unanswered = {i for i in fuzz.sent_ids if json.dumps(i) not in client.answered()}
        assert unanswered <= fuzz.may_be_lost, unanswered - fuzz.may_be_lost
        print(f"fuzz: {len(fuzz.sent_ids)} requests, {len(unanswered)} unanswered after framing attacks; "
              f"server RSS {rss_kb(client.proc.pid) / 1024:.0f} MiB")
    finally:
        code, stderr = finish(client)
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-5000:]


class _Writer:
    def __init__(self):
        self.out: list[dict] = []

    def write(self, data: bytes) -> None:
        self.out.append(json.loads(data.split(b"\r\n\r\n", 1)[1]))


@pytest.mark.asyncio
async def test_handled_messages_leave_nothing_behind(tmp_path):
    """pygls keeps every handler's future for $/cancelRequest; the server forgets each once it is done (a didChange
    per keystroke would otherwise stay for good), and answers only responses to its own requests."""
    server = make_server(RuntimeConfig(), ContextConfig(index_dir=tmp_path / "index"), Settings(),
                         make_model=lambda config: None)
    writer = _Writer()
    server.protocol.set_writer(writer)
    protocol = server.protocol

    def handle(message: dict) -> None:
        protocol.handle_message(protocol.structure_message({"jsonrpc": "2.0", **message}))

    try:
        handle({"id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}})
        uri = (tmp_path / "a.py").as_uri()
        handle({"method": "textDocument/didOpen", "params": {"textDocument": {
            "uri": uri, "languageId": "python", "version": 1, "text": "x = 1\n"}}})
        for version in range(2, 102):
            handle({"method": "textDocument/didChange", "params": {"textDocument": {"uri": uri, "version": version},
                                                                   "contentChanges": [{"text": f"x = {version}\n"}]}})
            handle({"method": "workspace/didChangeConfiguration", "params": {"settings": {"debounceMs": version}}})
        handle({"id": 2, "method": "workspace/executeCommand", "params": {"command": "repocomplete.stats"}})
        # A response carrying the id of a request of the client's: not ours, ignored.
        handle({"id": 3, "method": "textDocument/inlineCompletion", "params": {
            "textDocument": {"uri": uri}, "position": {"line": 0, "character": 0}, "context": AUTO}})
        handle({"id": 3, "result": None})
        for _ in range(50):
            await asyncio.sleep(0.02)
            if not protocol._request_futures:
                break
        assert not protocol._request_futures, protocol._request_futures
        assert server.workspace.get_text_document(uri).source == "x = 101\n"
        assert [m["id"] for m in writer.out if "id" in m and "method" not in m] == [1, 2, 3]
    finally:
        await server.lifecycle.stop()
