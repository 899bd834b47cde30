"""Open documents: which of them reach the context engine, and where a client's position falls in one.

pygls keeps the text of open documents; this module decides what of it the engine thread sees (`sync_buffer`) and
turns (uri, position) into (document, character offset) for the completion and showContext requests.

The context engine keeps derived data for each buffer it is sent (the parsed buffer, its retrieval windows, its
neighbours entry). Only the `max_buffers` most recently opened or edited documents are sent
(`ContextConfig.max_buffers`): opening or editing one more clears the least recently used one's buffer (the engine
goes back to the file on disk), and that document gets in-file context until it is edited again.
"""

from __future__ import annotations

from collections import OrderedDict
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
UNSYNCED = "unsynced"  # not among the `max_buffers` documents the context engine keeps


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


def valid_uri(uri: str) -> bool:
    """Whether a uri can name a file: JSON lets a client send lone surrogates, and %00 decodes to a NUL; no path
    holds either."""
    try:
        uri.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in fs_path(uri)


class Documents:
    def __init__(self, workspace: Callable[[], Workspace], worker: EngineWorker, max_chars: int, max_buffers: int = 32):
        self._workspace = workspace  # pygls' open documents (made at initialize; it applies the sync itself)
        self.worker = worker
        self.max_chars = max_chars  # larger documents get in-file context only (ContextConfig.max_file_bytes)
        self.max_buffers = max_buffers  # documents whose buffers reach the engine (ContextConfig.max_buffers)
        self.languages: tuple[str, ...] = DEFAULT_LANGUAGES  # set from the settings
        self._synced: OrderedDict[str, None] = OrderedDict()  # uris whose buffer the engine has, least recent first

    def problem(self, text: str) -> str | None:
        return text_problem(text, self.max_chars)

    def context_problem(self, uri: str, text: str) -> str | None:
        """Why a document gets no repository context: `problem(text)`, else UNSYNCED (its buffer is not among those
        the engine keeps: its own text would be the disk's there), else None."""
        problem = self.problem(text)
        if problem is None and uri not in self._synced:
            return UNSYNCED
        return problem

    def _syncable(self, doc) -> bool:
        """Whether a document's text goes to the context engine: a language we complete, text, not too large, a uri
        that can name a file."""
        return doc.language_id in self.languages and self.problem(doc.source) is None and valid_uri(doc.uri)

    @property
    def synced(self) -> list[str]:
        """The uris whose buffers the engine has, least recently used first."""
        return list(self._synced)

    # -- sync ----------------------------------------------------------------------------------------------------

    def _sync(self, uri: str, doc, edited_line: int | None = None) -> None:
        """Send a document's text (or, if it may not go, take back the buffer sent before); keep the bound."""
        if not self._syncable(doc):
            self._unsync(uri)
            return
        self._synced[uri] = None
        self._synced.move_to_end(uri)
        self.worker.sync_buffer(fs_path(uri), doc.source, edited_line)
        while len(self._synced) > self.max_buffers:
            self._unsync(next(iter(self._synced)))

    def _unsync(self, uri: str) -> None:
        if self._synced.pop(uri, ...) is None:
            self.worker.clear_buffer(fs_path(uri))

    def opened(self, uri: str) -> None:
        self._sync(uri, self._workspace().get_text_document(uri))

    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        last = params.content_changes[-1] if params.content_changes else None
        line = last.range.start.line + 1 if last is not None and hasattr(last, "range") else None
        self._sync(uri, self._workspace().get_text_document(uri), line)

    def closed(self, uri: str) -> None:
        self._synced.pop(uri, None)
        self.worker.clear_buffer(fs_path(uri))

    def saved(self, uri: str) -> None:
        self.worker.file_saved(fs_path(uri))

    def resync(self, root: Path) -> None:
        """Send the open documents under a workspace folder just indexed (their buffers were skipped before)."""
        documents = self._workspace().text_documents
        for uri in list(self._synced):
            path, doc = fs_path(uri), documents.get(uri)
            if doc is not None and Path(path).is_absolute() and root in Path(path).resolve().parents:
                self.worker.sync_buffer(path, doc.source)

    # -- positions -----------------------------------------------------------------------------------------------

    def locate(self, uri: str, position: types.Position):
        """(document, character offset, position clamped to its line); InvalidParams for a document not open or a
        position past its end."""
        if uri not in self._workspace().text_documents:
            raise JsonRpcInvalidParams(f"document not open: {uri}")
        if not valid_uri(uri):
            raise JsonRpcInvalidParams(f"not a valid uri (not UTF-8): {uri!r}")
        doc = self._workspace().get_text_document(uri)
        try:
            offset, position = convert.offset_at(doc, position)
        except convert.PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        return doc, offset, position
