"""Open documents: which of them reach the context engine, and where a client's position falls in one.

pygls keeps the text of open documents; this module decides what of it the engine thread sees (`sync_buffer`) and
turns (uri, position) into (document, character offset) for the completion and showContext requests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.uris import to_fs_path
from pygls.workspace import Workspace

from repocomplete.lsp_server import convert
from repocomplete.lsp_server.config import DEFAULT_LANGUAGES
from repocomplete.lsp_server.worker import EngineWorker

BINARY = "binary"
LARGE = "large"


def text_problem(text: str, max_chars: int) -> str | None:
    """Why a document's text gets no repository context: BINARY (it holds NUL bytes), LARGE (over `max_chars`), or
    None. A binary document gets no completions either; a large one gets in-file context."""
    if "\x00" in text:
        return BINARY
    if len(text) > max_chars:
        return LARGE
    return None


def fs_path(uri: str) -> str:
    return to_fs_path(uri) or uri


class Documents:
    def __init__(self, workspace: Callable[[], Workspace], worker: EngineWorker, max_chars: int):
        self._workspace = workspace  # pygls' open documents (made at initialize; it applies the sync itself)
        self.worker = worker
        self.max_chars = max_chars  # larger documents get in-file context only (ContextConfig.max_file_bytes)
        self.languages: tuple[str, ...] = DEFAULT_LANGUAGES  # set from the settings

    def problem(self, text: str) -> str | None:
        return text_problem(text, self.max_chars)

    def _syncable(self, doc) -> bool:
        """Whether a document's text goes to the context engine: a language we complete, text, not too large."""
        return doc.language_id in self.languages and self.problem(doc.source) is None

    # -- sync ----------------------------------------------------------------------------------------------------

    def opened(self, uri: str) -> None:
        doc = self._workspace().get_text_document(uri)
        if self._syncable(doc):
            self.worker.sync_buffer(fs_path(uri), doc.source)

    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        doc = self._workspace().get_text_document(uri)
        if self._syncable(doc):
            last = params.content_changes[-1] if params.content_changes else None
            line = last.range.start.line + 1 if last is not None and hasattr(last, "range") else None
            self.worker.sync_buffer(fs_path(uri), doc.source, line)

    def closed(self, uri: str) -> None:
        self.worker.clear_buffer(fs_path(uri))

    def saved(self, uri: str) -> None:
        self.worker.file_saved(fs_path(uri))

    def resync(self, root: Path) -> None:
        """Send the open documents under a workspace folder just indexed (their buffers were skipped before)."""
        for uri, doc in list(self._workspace().text_documents.items()):
            path = fs_path(uri)
            if Path(path).is_absolute() and root in Path(path).resolve().parents and self._syncable(doc):
                self.worker.sync_buffer(path, doc.source)

    # -- positions -----------------------------------------------------------------------------------------------

    def locate(self, uri: str, position: types.Position):
        """(document, character offset, position clamped to its line); InvalidParams for a document not open or a
        position past its end."""
        if uri not in self._workspace().text_documents:
            raise JsonRpcInvalidParams(f"document not open: {uri}")
        doc = self._workspace().get_text_document(uri)
        try:
            offset, position = convert.offset_at(doc, position)
        except convert.PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        return doc, offset, position
