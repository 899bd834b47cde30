"""The repocomplete language server: the pygls server object and the parts it is made of.

Each part has one job: `Documents` (what open documents reach the engine, positions), `Completions` (requests
from arrival to answer), `Lifecycle` (settings, model, indexing, status, shutdown), and `EngineWorker` (the one
thread that runs engine work). The handlers (`lsp_server.handlers`) read params and call one of them.
"""

from __future__ import annotations

import logging

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
    def _handle_cancel_notification(self, msg_id):
        """$/cancelRequest: stop the engine's work too (pygls alone only cancels a request not yet started)."""
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
