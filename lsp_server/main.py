"""`repocomplete serve`: the server over stdio (the default) or one TCP connection."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from repocomplete.context_engine.config import ContextConfig
from repocomplete.lsp_server.config import Settings
from repocomplete.lsp_server.handlers import make_server
from repocomplete.lsp_server.server import RepocompleteServer
from repocomplete.lsp_server.transport import MessageLoop, PipeWriter, StdinReader
from repocomplete.model_runtime.config import RuntimeConfig

log = logging.getLogger(__name__)


def serve(runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings, tcp: tuple[str, int] | None = None,
          make_model=None) -> int:
    """Serve one client until it sends exit or goes away; the exit code (0 after shutdown+exit or end of input).

    `runtime` and `context_config` own the model's and the context's defaults; `settings` holds the server's own
    knobs (the client's settings may override the others)."""
    _quiet_pygls()
    server = make_server(runtime, context_config, settings, make_model)
    try:
        return asyncio.run(_serve_tcp(server, *tcp) if tcp else _serve_stdio(server))
    except KeyboardInterrupt:
        return 130
    finally:
        server.worker.stop()


async def _serve_stdio(server: RepocompleteServer) -> int:
    # The protocol owns fd 1; anything else that prints (a library's print, a progress bar) goes to stderr.
    out_fd = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    writer = PipeWriter(out_fd)
    server.protocol.set_writer(writer)
    reader = StdinReader(sys.stdin.fileno(), asyncio.get_running_loop())
    code = await MessageLoop(server.protocol, writer.write).run(reader.read)
    await server.lifecycle.stop()
    return code


class _SocketWriter:
    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def close(self) -> None:
        self._writer.close()


async def _serve_tcp(server: RepocompleteServer, host: str, port: int) -> int:
    """One client: the first connection is served, later ones are refused while it lasts; its end ends the server."""
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    busy = False

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal busy
        if busy:
            writer.close()
            return
        busy = True
        out = _SocketWriter(writer)
        server.protocol.set_writer(out)
        try:
            code = await MessageLoop(server.protocol, out.write).run(lambda: reader.read(1 << 16))
        except (ConnectionError, OSError):
            code = 0
        out.close()
        if not done.done():
            done.set_result(code)

    listener = await asyncio.start_server(connection, host, port)
    bound = listener.sockets[0].getsockname()
    print(f"repocomplete: serving LSP on {bound[0]}:{bound[1]}", file=sys.stderr, flush=True)
    async with listener:
        code = await done
    await server.lifecycle.stop()
    return code


def _quiet_pygls() -> None:
    """Our transport logs bad input in one line; pygls would add a traceback for each, and for every error response
    a handler gives on purpose (a position past the end: InvalidParams)."""
    from pygls.exceptions import JsonRpcException

    def keep(record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Unable to deserialize"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, JsonRpcException)

    logging.getLogger("pygls.protocol.json_rpc").addFilter(keep)
