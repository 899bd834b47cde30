"""The LSP methods and commands the server answers: each handler reads its params, calls one part of the server
and converts the answer. `make_server` registers them."""

from __future__ import annotations

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from repocomplete.context_engine.config import ContextConfig
from repocomplete.lsp_server import convert
from repocomplete.lsp_server.config import Settings
from repocomplete.lsp_server.server import RepocompleteServer
from repocomplete.model_runtime.config import RuntimeConfig

SHOW_CONTEXT = "repocomplete.showContext"
STATS = "repocomplete.stats"
TRIGGER_CHARACTERS = [".", "(", "["]


def initialize(ls: RepocompleteServer, params: types.InitializeParams) -> None:
    ls.lifecycle.initialize(params)


async def initialized(ls: RepocompleteServer, params: types.InitializedParams) -> None:
    await ls.lifecycle.initialized()


async def shutdown(ls: RepocompleteServer, params: None) -> None:
    await ls.lifecycle.stop()


def did_open(ls: RepocompleteServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.documents.opened(params.text_document.uri)


def did_change(ls: RepocompleteServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.completions.stale(params.text_document.uri)
    ls.documents.changed(params)


def did_close(ls: RepocompleteServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.completions.forget(params.text_document.uri)
    ls.documents.closed(params.text_document.uri)


def did_save(ls: RepocompleteServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.documents.saved(params.text_document.uri)


async def did_change_configuration(ls: RepocompleteServer, params: types.DidChangeConfigurationParams) -> None:
    await ls.lifecycle.configuration_changed(params)


async def did_change_workspace_folders(ls: RepocompleteServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    await ls.lifecycle.workspace_folders_changed(params)


async def inline_completion(ls: RepocompleteServer, params: types.InlineCompletionParams):
    return await ls.completions.complete(params.text_document.uri, params.position,
                                         types.TEXT_DOCUMENT_INLINE_COMPLETION, ls.protocol.msg_id)


async def completion(ls: RepocompleteServer, params: types.CompletionParams):
    return await ls.completions.complete(params.text_document.uri, params.position, types.TEXT_DOCUMENT_COMPLETION,
                                         ls.protocol.msg_id)


async def show_context(ls: RepocompleteServer, *args) -> dict:
    try:
        uri, position = convert.parse_position_argument(list(args))
    except ValueError as e:
        raise JsonRpcInvalidParams(str(e)) from None
    return await ls.completions.show_context(uri, position)


def stats(ls: RepocompleteServer, *args) -> dict:
    reset = bool(args and isinstance(args[0], dict) and args[0].get("reset"))
    return {**ls.completions.stats(reset), **ls.lifecycle.status_json(), "worker_alive": ls.worker.alive}


def make_server(runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings,
                make_model=None) -> RepocompleteServer:
    """The server, its handlers registered. `runtime` and `context_config` own the model's and the context's
    defaults; `settings` holds the server's own knobs (see lsp_server.config)."""
    server = RepocompleteServer(runtime, context_config, settings, make_model)
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.SHUTDOWN)(shutdown)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE, types.SaveOptions(include_text=False))(did_save)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.WORKSPACE_DID_CHANGE_WORKSPACE_FOLDERS)(did_change_workspace_folders)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION,
                   types.CompletionOptions(trigger_characters=TRIGGER_CHARACTERS))(completion)
    server.command(SHOW_CONTEXT)(show_context)
    server.command(STATS)(stats)
    return server
