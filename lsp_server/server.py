"""The repocomplete language server: the pygls server object and the parts it is made of.

Each part has one job: `Documents` (what open documents reach the engine, positions), `Completions` (requests
from arrival to answer), `Lifecycle` (settings, model, indexing, status, shutdown), and `EngineWorker` (the one
thread that runs engine work). The handlers (`lsp_server.handlers`) read params and call one of them.
"""

from __future__ import annotations

import logging
import uuid

from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from repocomplete.context_engine.config import ContextConfig
from repocomplete.lsp_server.completions import Completions
from repocomplete.lsp_server.config import Settings
from repocomplete.lsp_server.documents import Documents
from repocomplete.lsp_server.lifecycle import Lifecycle
from repocomplete.lsp_server.worker import EngineWorker
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.pipeline import Completer

log = logging.getLogger(__name__)

VERSION = "0.1.0"


class Protocol(LanguageServerProtocol):
    _seen: frozenset[str] = frozenset()  # of initialize and initialized, those received

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sent_ids: set = set()  # the ids of our requests to the client awaiting a response

    def _execute_handler(self, msg_id, handler, callback, args=None, kwargs=None):
        """pygls keeps the future of every handler it runs in `_request_futures` (for $/cancelRequest) but removes
        only a request's: the future of each notification (every didChange) and of each step of its built-in
        handlers would stay for good. Each is forgotten when it is done; its outcome counts as seen (a step of a
        request cancelled meanwhile is never looked at by pygls, which used to keep it from being collected)."""
        def forget(future) -> None:
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]
            if not future.cancelled():
                future.exception()
            callback(future)

        super()._execute_handler(msg_id, handler, forget, args, kwargs)

    def _handle_request(self, msg_id, method_name: str, params):
        """A second initialize is refused (pygls would make a new workspace, losing the open documents, and the
        engine thread cannot start twice)."""
        if self._again(method_name, types.INITIALIZE):
            self._send_response(msg_id, error=types.ResponseError(
                code=types.ErrorCodes.InvalidRequest, message="initialize may only be sent once"))
            return
        super()._handle_request(msg_id, method_name, params)

    def _handle_notification(self, method_name: str, params):
        """A second initialized is ignored (each would index the workspace folders again)."""
        if not self._again(method_name, types.INITIALIZED):
            super()._handle_notification(method_name, params)

    def send_request(self, method, params=None, callback=None, msg_id=None):
        """A request to the client, its id remembered until it is answered or given up (a client that never answers
        leaves nothing behind)."""
        msg_id = str(uuid.uuid4()) if msg_id is None else msg_id
        self._sent_ids.add(msg_id)
        future = super().send_request(method, params, callback, msg_id)

        def done(_) -> None:
            self._sent_ids.discard(msg_id)
            if self._request_futures.get(msg_id) is future:
                del self._request_futures[msg_id]

        future.add_done_callback(done)
        return future

    def _handle_response(self, msg_id, result=None, error=None):
        """Only a response to a request of ours is taken: pygls keeps the client's requests in flight in the same
        table, and a response carrying one of their ids would complete (or break) that request's handler."""
        if msg_id not in self._sent_ids:
            log.warning("bad input: a response to no request of ours (id %r) ignored", msg_id)
            return
        super()._handle_response(msg_id, result, error)

    def _again(self, method_name: str, once: str) -> bool:
        """Whether this is a second `once` message (logged as bad input); records the first."""
        if method_name != once:
            return False
        if once in self._seen:
            log.warning("bad input: %s sent again; ignored", once)
            return True
        self._seen = self._seen | {once}
        return False

    def _handle_cancel_notification(self, msg_id):
        """$/cancelRequest: stop the engine's work too (pygls alone only cancels a request not yet started)."""
        if not isinstance(msg_id, (int, str)) or isinstance(msg_id, bool):
            log.warning("bad input: $/cancelRequest for id %r ignored", msg_id)
            return
        self._server.completions.cancel_request(msg_id)
        future = self._request_futures.pop(msg_id, None)
        if future is not None:
            future.cancel()


class RepocompleteServer(LanguageServer):
    def __init__(self, runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings, make_model=None):
        """`runtime` and `context_config` own the model's and the context's defaults; `settings` holds the server's
        own knobs (and overrides, which the client's settings may change). `make_model(RuntimeConfig)` replaces
        the model loader (tests)."""
        super().__init__("repocomplete", VERSION, protocol_cls=Protocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.worker = EngineWorker(Completer(None, context_config))
        self.documents = Documents(lambda: self.workspace, self.worker, context_config.max_file_bytes,
                                   context_config.max_buffers)
        self.completions = Completions(self.worker, self.documents, self.tell,
                                       advise=lambda message: self.lifecycle.advise(message))
        self.lifecycle = Lifecycle(self, runtime, context_config, settings, self.worker, self.documents,
                                   self.completions, self.tell, make_model)

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Warning, show: bool = False) -> None:
        """A message for the user: in the client's log (and shown, if `show`) and in ours."""
        log.log(logging.WARNING if kind <= types.MessageType.Warning else logging.INFO, "%s", message)
        self.window_log_message(types.LogMessageParams(type=kind, message=f"repocomplete: {message}"))
        if show:
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"repocomplete: {message}"))
