"""Reading and writing LSP messages, robust to a misbehaving client.

pygls' own read loop stops on nothing, but it desynchronises for good on a bad header (a body then reads as
headers and swallows the next message), answers nothing to a request whose params do not fit their type (the
client waits forever) and prints a traceback for every bad message. This loop frames the stream itself, finds the
next header again after garbage or a wrong Content-Length, answers parse errors, invalid requests and invalid
params as JSON-RPC says, and hands every well-formed message to pygls' protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from pygls.exceptions import JsonRpcException

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 2**20
# How long a body may sit incomplete before we look inside it for the next message's header (a Content-Length
# larger than the body sent makes the reader wait for bytes that will never come).
STALL_SECONDS = 0.5

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\S*)", re.IGNORECASE)
# A header block inside bytes that should have been a body: Content-Length, then the blank line.
_EMBEDDED = re.compile(rb"Content-Length[ \t]*:[ \t]*\d+[ \t]*\r?\n(?:[^\r\n]*\r?\n)*?\r?\n", re.IGNORECASE)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602


@dataclass
class Frame:
    body: bytes | None  # None: a framing problem, described by `error`
    error: str = ""


class Framer:
    """The base protocol's framing over a byte stream: headers, a blank line, Content-Length bytes of body.

    Header blocks without a usable Content-Length are dropped (with an error frame), and the bytes between
    messages that are not a header are skipped: the next header found starts the next message.
    """

    def __init__(self, max_body: int = MAX_BODY_BYTES):
        self.max_body = max_body
        self._buf = bytearray()
        self._want: int | None = None  # body length being waited for

    @property
    def waiting_for_body(self) -> bool:
        return self._want is not None and len(self._buf) < self._want

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while True:
            if self._want is None:
                end = _HEADER_END.search(self._buf)
                if end is None:
                    if len(self._buf) > 65536:  # no header block in sight: garbage, keep only its tail
                        frames.append(Frame(None, f"{len(self._buf) - 1024} bytes without a header skipped"))
                        del self._buf[: len(self._buf) - 1024]
                    return frames
                block = bytes(self._buf[: end.start()])
                del self._buf[: end.end()]
                lengths = _LENGTH.findall(block)
                value = lengths[-1] if lengths else None
                if value is None or not value.isdigit():
                    what = "no Content-Length" if value is None else f"bad Content-Length {value[:40]!r}"
                    frames.append(Frame(None, f"header block with {what} dropped: {block[:80]!r}"))
                    continue
                length = int(value)
                if length > self.max_body:
                    frames.append(Frame(None, f"Content-Length {length} over the limit of {self.max_body}; dropped"))
                    continue
                if len(lengths) > 1 or not block.lstrip().lower().startswith(b"content-"):
                    frames.append(Frame(None, f"garbage before a header skipped: {block[:80]!r}"))
                self._want = length
            if len(self._buf) < self._want:
                return frames
            body = bytes(self._buf[: self._want])
            del self._buf[: self._want]
            self._want = None
            frames.append(Frame(body))

    def stalled(self) -> list[Frame]:
        """No bytes came for a while with a body incomplete: if the next message's header is already inside it, the
        Content-Length was wrong. The bytes before that header become a (probably broken) body; framing restarts at
        the header."""
        if not self.waiting_for_body:
            return []
        match = _EMBEDDED.search(self._buf)
        if match is None:
            return []
        body = bytes(self._buf[: match.start()])
        del self._buf[: match.start()]
        self._want = None
        return [Frame(None, f"Content-Length larger than the body ({len(body)} bytes) dropped")] + self.feed(b"")


def error_response(msg_id: Any, code: int, message: str) -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def check_message(data: Any) -> tuple[str, Any] | None:
    """None for a message pygls can take; else (what is wrong, the id to answer, or `...` for no answer).

    JSON-RPC: a request gets an error response; a broken notification is dropped; when the id cannot be told,
    the answer goes to id null."""
    if not isinstance(data, dict):
        return "not a JSON-RPC object (batches are not part of LSP)", None
    msg_id = data.get("id", ...)
    if msg_id is not ... and msg_id is not None and (not isinstance(msg_id, (int, str)) or isinstance(msg_id, bool)):
        return f"bad id {msg_id!r}", None
    if data.get("jsonrpc") != "2.0":
        return "jsonrpc must be \"2.0\"", (None if msg_id is ... else msg_id)
    if "method" in data:
        if not isinstance(data["method"], str):
            return "method must be a string", (... if msg_id is ... else msg_id)
        if "params" in data and not isinstance(data["params"], (dict, list, type(None))):
            return "params must be an object or an array", (... if msg_id is ... else msg_id)
        return None
    if msg_id is ...:
        return "neither a request, a notification nor a response", None
    if "result" not in data and "error" not in data:
        return "a response without result or error", ...
    return None


class MessageLoop:
    """Frames bytes from a transport, checks each message, hands it to the pygls protocol. Returns an exit code."""

    def __init__(self, protocol, write):
        self.protocol = protocol
        self.write = write  # bytes -> None
        self.framer = Framer()

    def send(self, payload: dict) -> None:
        body = json.dumps(payload).encode("utf-8")
        self.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def handle_frame(self, frame: Frame) -> None:
        if frame.body is None:
            log.warning("bad input: %s", frame.error)
            return
        try:
            data = json.loads(frame.body)
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("bad input: invalid JSON (%s): %r", e, frame.body[:80])
            self.send(error_response(None, PARSE_ERROR, f"Parse error: {e}"))
            return
        problem = check_message(data)
        if problem is not None:
            what, msg_id = problem
            log.warning("bad input: %s: %r", what, frame.body[:120])
            if msg_id is not ...:
                self.send(error_response(msg_id, INVALID_REQUEST, f"Invalid request: {what}"))
            return
        try:
            message = self.protocol.structure_message(data)
        except JsonRpcException as e:
            method = data.get("method")
            log.warning("bad input: %s params do not fit: %s", method or "response", (e.__cause__ or e))
            if "id" in data and method is not None:
                self.send(error_response(data["id"], INVALID_PARAMS, f"Invalid params for {method}: {e.__cause__ or e}"))
            return
        if not hasattr(message, "jsonrpc"):  # structure_message left it a dict: nothing pygls can take
            log.warning("bad input: unusable message %r", frame.body[:120])
            return
        if "method" in data and "id" in data and not hasattr(message, "id"):  # pygls would drop the id: no answer
            log.warning("bad input: notification %s sent with an id", data["method"])
            self.send(error_response(data["id"], INVALID_REQUEST, f"Invalid request: {data['method']} is a notification"))
            return
        self.protocol.handle_message(message)  # SystemExit (the exit notification) goes to the caller

    async def run(self, read_chunk) -> int:
        """read_chunk() -> bytes (b"" at the end). Ends at EOF (0) or on the exit notification (its code)."""
        while True:
            timeout = STALL_SECONDS if self.framer.waiting_for_body else None
            try:
                chunk = await asyncio.wait_for(read_chunk(), timeout)
            except asyncio.TimeoutError:
                frames = self.framer.stalled()
            else:
                if not chunk:
                    log.info("the client closed the connection")
                    return 0
                frames = self.framer.feed(chunk)
            for frame in frames:
                try:
                    self.handle_frame(frame)
                except SystemExit as e:
                    return e.code if isinstance(e.code, int) else 0
                except ClientGone:
                    return 0
                except Exception:
                    log.exception("unexpected error handling a message; still serving")
            await asyncio.sleep(0)  # let handlers scheduled by these messages run between chunks


class ClientGone(Exception):
    """Writing to the client failed: the connection is gone."""


class PipeWriter:
    """pygls' writer over a file descriptor (stdout); a closed pipe is a client gone, not a traceback."""

    def __init__(self, fd: int):
        self.fd = fd
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except (BrokenPipeError, ConnectionResetError, OSError) as e:
            self.closed = True
            log.info("the client is gone (%s)", e)

    def close(self) -> None:
        self.closed = True


class StdinReader:
    """Chunks of stdin from a daemon thread (a blocked read never holds up the exit)."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop):
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._fd = fd
        self._loop = loop
        threading.Thread(target=self._pump, name="repocomplete-stdin", daemon=True).start()

    def _pump(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1 << 16)
            except OSError:
                data = b""
            try:
                self._loop.call_soon_threadsafe(self.queue.put_nowait, data)
            except RuntimeError:  # the loop is closed: we are exiting
                return
            if not data:
                return

    def read(self):
        return self.queue.get()
