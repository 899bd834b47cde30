"""The repocomplete language server: LSP events in, engine calls out.

Handlers (at the bottom) are a few lines each: they read params and call a method of `RepocompleteServer`, which
keeps the protocol-side state (settings, in-flight requests, cache, stats) and sends engine work to the one engine
thread (`lsp_server.worker`). Nothing here blocks the event loop on the model or the index.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol
from pygls.uris import to_fs_path

from repocomplete.pipeline import Completer
from context_engine.config import ContextConfig
from lsp_server import config as settings_mod
from lsp_server import convert
from lsp_server.config import Settings
from lsp_server.scheduling import Cached, CompletionCache, Debounce, RequestLog, RequestStats
from lsp_server.worker import CompletionJob, EngineWorker, NotReady
from model_runtime.config import RuntimeConfig
from model_runtime.engine import CancelToken

log = logging.getLogger(__name__)

VERSION = "0.1.0"
STATUS = "repocomplete/status"  # {state: starting|indexing|ready|error|disabled, model, message, percentage}
SHOW_CONTEXT = "repocomplete.showContext"
STATS = "repocomplete.stats"
CLIENT_REQUEST_TIMEOUT_S = 10.0  # a client that never answers workspace/configuration does not hold us up


@dataclass
class Pending:
    """A completion request between arrival and answer."""

    record: RequestStats
    token: CancelToken = field(default_factory=CancelToken)
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    job: CompletionJob | None = None
    superseded_at: float | None = None
    cancelled_at: float | None = None


class Protocol(LanguageServerProtocol):
    def _handle_cancel_notification(self, msg_id):
        """$/cancelRequest: stop the engine's work too (pygls alone only cancels a request not yet started)."""
        self._server.cancel_request(msg_id)
        future = self._request_futures.pop(msg_id, None)
        if future is not None:
            future.cancel()


class RepocompleteServer(LanguageServer):
    def __init__(self, runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings, make_model=None):
        super().__init__("repocomplete", VERSION, protocol_cls=Protocol,
                         text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.runtime = runtime
        self.settings = settings
        self.generation = 0  # bumped on every settings change: part of the cache key
        self.debounce = Debounce(settings.debounce_ms)
        self.cache = CompletionCache()
        self.requests = RequestLog()
        self.worker = EngineWorker(Completer(None, context_config))
        self.max_buffer_chars = context_config.max_file_bytes  # larger documents get in-file context only
        self._make_model = make_model
        self._inflight: dict[str, Pending] = {}  # uri -> the newest completion request for that document
        self._by_msg_id: dict[Any, Pending] = {}
        self._last: dict[str, tuple[tuple, dict]] = {}  # uri -> (cache key, explain) of its last completion
        self._roots: set[Path] = set()
        self._model_job: asyncio.Future | None = None
        self._warned: set[tuple[str, str]] = set()
        self.state = "starting"
        self.model_name = settings.model
        self.client_progress = False
        self.client_configuration = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._initialized = False
        self._status_message, self._status_pct = "", None

    # -- messages to the client --------------------------------------------------------------------------------

    def status(self, state: str, message: str = "", percentage: int | None = None) -> None:
        """The repocomplete/status notification (held back until `initialized`, as the specification asks)."""
        self.state, self._status_message, self._status_pct = state, message, percentage
        if self.loop is not None and self._initialized:
            self.protocol.notify(STATUS, {"state": state, "model": self.model_name, "message": message,
                                          "percentage": percentage})

    def tell(self, message: str, kind: types.MessageType = types.MessageType.Warning, show: bool = False) -> None:
        log.log(logging.WARNING if kind <= types.MessageType.Warning else logging.INFO, "%s", message)
        self.window_log_message(types.LogMessageParams(type=kind, message=f"repocomplete: {message}"))
        if show:
            self.window_show_message(types.ShowMessageParams(type=kind, message=f"repocomplete: {message}"))

    def _warn_once(self, uri: str, what: str, message: str) -> None:
        if (uri, what) not in self._warned:
            self._warned.add((uri, what))
            self.tell(message, types.MessageType.Info)

    # -- lifecycle -------------------------------------------------------------------------------------------

    def initialize(self, params: types.InitializeParams) -> None:
        self.loop = asyncio.get_running_loop()
        caps = params.capabilities
        self.client_progress = bool(caps.window and caps.window.work_done_progress)
        self.client_configuration = bool(caps.workspace and caps.workspace.configuration)
        self.apply_settings(settings_mod.section_of(params.initialization_options), initial=True)
        self.worker.start()
        self._roots = set(self._workspace_roots(params))
        self.load_model()

    def _workspace_roots(self, params: types.InitializeParams) -> list[Path]:
        uris = [f.uri for f in params.workspace_folders or []]
        if not uris and params.root_uri:
            uris = [params.root_uri]
        roots = []
        for uri in uris:
            path = to_fs_path(uri)
            if path and Path(path).is_dir():
                roots.append(Path(path).resolve())
        return roots

    async def initialized(self) -> None:
        self._initialized = True
        self.status(self.state, self._status_message, self._status_pct)
        await self.pull_configuration()
        await self.index(sorted(self._roots))

    async def pull_configuration(self) -> None:
        if not self.client_configuration:
            return
        try:
            result = await asyncio.wait_for(
                self.workspace_configuration_async(
                    types.ConfigurationParams(items=[types.ConfigurationItem(section=settings_mod.SECTION)])),
                CLIENT_REQUEST_TIMEOUT_S)
        except Exception as e:
            log.warning("workspace/configuration failed: %s: %s", type(e).__name__, e)
            return
        if result:
            self.apply_settings(settings_mod.section_of(result[0]))

    def configuration_changed(self, params: types.DidChangeConfigurationParams):
        """Pull the section again where the client supports it; else take what the notification carries."""
        if self.client_configuration:
            return self.pull_configuration()
        self.apply_settings(settings_mod.section_of(params.settings))
        return None

    def apply_settings(self, raw: Any, initial: bool = False) -> None:
        before = self.settings
        after, problems = settings_mod.apply(before, raw)
        for problem in problems:
            self.tell(problem, show=not problem.startswith("unknown"))
        if after == before:
            return
        self.settings = after
        self.generation += 1
        self.debounce.floor_ms = after.debounce_ms
        if not after.enabled:
            for pending in list(self._inflight.values()):
                self._supersede(pending)
        if initial:
            return
        if any(getattr(after, f) != getattr(before, f) for f in settings_mod.MODEL_FIELDS):
            self.load_model(previous=before)
        elif after.enabled != before.enabled:
            self.status("ready" if after.enabled and self._model_ready() else
                        "disabled" if not after.enabled else self.state)

    def _model_ready(self) -> bool:
        return self._model_job is not None and self._model_job.done() and not self._model_job.exception()

    def load_model(self, previous: Settings | None = None) -> None:
        s = self.settings
        config = self.runtime.replace(model=s.model, adapter=s.adapter, endpoint=s.endpoint)
        self.model_name = s.endpoint or s.model
        self.status("starting", f"loading {self.model_name}")

        def make():
            if self._make_model is not None:
                return self._make_model(config)
            from model_runtime.backend import make_engine

            config.validate()
            return make_engine(config)

        future = asyncio.wrap_future(self.worker.load_model(make))
        self._model_job = future

        def done(f: asyncio.Future) -> None:
            if f.cancelled():
                return
            if f.exception() is not None:
                e = f.exception()
                self.tell(f"cannot load model {self.model_name}: {e}", types.MessageType.Error, show=True)
                if previous is not None:  # keep serving with the model we had
                    self.settings = self.settings.replace(**{k: getattr(previous, k) for k in settings_mod.MODEL_FIELDS})
                    self.model_name = previous.endpoint or previous.model
                    self._model_job = asyncio.get_running_loop().create_future()
                    self._model_job.set_result(None)
                    self.status("ready" if self.settings.enabled else "disabled", str(e))
                else:
                    self.status("error", str(e))
                return
            self.cache.clear()
            if self.state != "indexing":
                self.status("ready" if self.settings.enabled else "disabled")

        future.add_done_callback(done)

    async def index(self, roots: list[Path]) -> None:
        """Index workspace folders on the engine thread, reporting $/progress (if the client takes it) and status."""
        if not roots:
            return
        token = None
        if self.client_progress:
            token = f"repocomplete-index-{uuid.uuid4().hex[:8]}"
            try:
                await asyncio.wait_for(self.work_done_progress.create_async(token), CLIENT_REQUEST_TIMEOUT_S)
            except Exception as e:
                log.info("no progress token: %s", e)
                token = None
        if token:
            self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                title="repocomplete: indexing", message=", ".join(r.name for r in roots), percentage=0,
                cancellable=False))
        loop = asyncio.get_running_loop()
        for n, root in enumerate(roots):
            last = [-1]

            def report(done: int, total: int, root=root, n=n, last=last) -> None:  # on the engine thread
                pct = int(100 * (n + done / max(total, 1)) / len(roots))
                if pct != last[0]:
                    last[0] = pct
                    loop.call_soon_threadsafe(self._report_indexing, token, root, pct)

            self._report_indexing(token, root, int(100 * n / len(roots)))
            try:
                await asyncio.wrap_future(self.worker.open_workspace(root, on_progress=report))
            except Exception as e:
                self.tell(f"indexing {root} failed: {type(e).__name__}: {e}", types.MessageType.Error)
            else:
                self._resync_open_documents(root)
        if token:
            self.work_done_progress.end(token, types.WorkDoneProgressEnd(message="indexed"))
        if self._model_job is not None and self._model_job.done():
            self.status(("ready" if self.settings.enabled else "disabled") if self._model_ready() else "error")
        else:
            self.status("starting", f"loading {self.model_name}")

    def _report_indexing(self, token, root: Path, pct: int) -> None:
        if token:
            self.work_done_progress.report(token, types.WorkDoneProgressReport(message=root.name, percentage=pct))
        self.status("indexing", f"indexing {root.name}", pct)

    def workspace_folders_changed(self, params: types.DidChangeWorkspaceFoldersParams):
        for folder in params.event.removed:
            path = to_fs_path(folder.uri)
            if path:
                self._roots.discard(Path(path).resolve())
                self.worker.close_workspace(Path(path).resolve())
        added = [Path(p).resolve() for f in params.event.added if (p := to_fs_path(f.uri)) and Path(p).is_dir()]
        self._roots.update(added)
        return self.index(added)

    async def stop_engine(self) -> None:
        """Cancel what is in flight and stop the engine thread (shutdown, or the client gone)."""
        for pending in list(self._inflight.values()):
            self._supersede(pending)
        await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)

    # -- documents -------------------------------------------------------------------------------------------

    def _path(self, uri: str) -> str:
        return to_fs_path(uri) or uri

    def _syncable(self, doc) -> bool:
        """Whether a document's text goes to the context engine: a language we complete, text, not too large."""
        text = doc.source
        return (doc.language_id in self.settings.languages and len(text) <= self.max_buffer_chars
                and "\x00" not in text)

    def opened(self, uri: str) -> None:
        doc = self.workspace.get_text_document(uri)
        if self._syncable(doc):
            self.worker.sync_buffer(self._path(uri), doc.source)

    def changed(self, params: types.DidChangeTextDocumentParams) -> None:
        uri = params.text_document.uri
        pending = self._inflight.get(uri)
        if pending is not None:  # its text is stale now
            self._supersede(pending)
        doc = self.workspace.get_text_document(uri)
        if self._syncable(doc):
            last = params.content_changes[-1] if params.content_changes else None
            line = last.range.start.line + 1 if last is not None and hasattr(last, "range") else None
            self.worker.sync_buffer(self._path(uri), doc.source, line)

    def closed(self, uri: str) -> None:
        pending = self._inflight.get(uri)
        if pending is not None:
            self._supersede(pending)
        self._last.pop(uri, None)
        self.worker.clear_buffer(self._path(uri))

    def saved(self, uri: str) -> None:
        self.worker.file_saved(self._path(uri))

    def _resync_open_documents(self, root: Path) -> None:
        for uri, doc in list(self.workspace.text_documents.items()):
            path = self._path(uri)
            if Path(path).is_absolute() and root in Path(path).resolve().parents and self._syncable(doc):
                self.worker.sync_buffer(path, doc.source)

    def _document(self, uri: str):
        if uri not in self.workspace.text_documents:
            raise JsonRpcInvalidParams(f"document not open: {uri}")
        return self.workspace.get_text_document(uri)

    def _locate(self, uri: str, position: types.Position):
        doc = self._document(uri)
        try:
            offset, position = convert.offset_at(doc, position)
        except convert.PositionError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        return doc, offset, position

    # -- completion ------------------------------------------------------------------------------------------

    def _supersede(self, pending: Pending) -> None:
        if pending.superseded_at is None:
            pending.superseded_at = time.monotonic()
        pending.token.cancel()
        pending.superseded.set()

    def cancel_request(self, msg_id) -> None:
        pending = self._by_msg_id.get(msg_id)
        if pending is not None:
            pending.cancelled_at = time.monotonic()
            pending.token.cancel()
            pending.superseded.set()

    async def complete(self, uri: str, position: types.Position, method: str):
        """The completion for a cursor, or None when there is nothing to show. Both completion methods come here."""
        record = self.requests.start(uri, method)
        self.debounce.arrived()
        msg_id = self.protocol.msg_id
        try:
            return await self._complete(uri, position, method, record, msg_id)
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except NotReady as e:
            record.outcome = "skipped"
            log.info("no completion: %s", e)
            return None
        except Exception:
            record.outcome = "error"
            raise
        finally:
            record.total_ms = round((time.monotonic() - record._t0) * 1000, 2)
            self._by_msg_id.pop(msg_id, None)

    async def _complete(self, uri, position, method, record: RequestStats, msg_id):
        doc, offset, position = self._locate(uri, position)
        settings, generation = self.settings, self.generation
        if not settings.enabled or doc.language_id not in settings.languages:
            record.outcome = "skipped"
            return None
        text = doc.source
        if "\x00" in text:
            record.outcome = "skipped"
            self._warn_once(uri, "binary", f"{uri} holds NUL bytes (binary?): no completions there")
            return None

        def answer(completion: str):
            record.chars = len(completion)
            if method == types.TEXT_DOCUMENT_INLINE_COMPLETION:
                return convert.inline_items(completion, position)
            return convert.completion_list(completion, text, offset, position, doc)

        back = self.cache.prefix_chars + self.cache.max_typed
        prefix, suffix = text[max(0, offset - back): offset], text[offset: offset + self.cache.suffix_chars]
        key = self.cache.key(uri, generation, prefix, suffix)
        hit = self.cache.get(uri, generation, prefix, suffix)
        if hit is not None:
            record.outcome = "cached"
            self._last[uri] = (key, hit[0].explain)
            return answer(hit[1])

        pending = Pending(record)
        older = self._inflight.get(uri)
        if older is not None:
            self._supersede(older)
        self._inflight[uri] = pending
        if msg_id is not None:
            self._by_msg_id[msg_id] = pending
        try:
            record.debounce_ms = round(self.debounce.delay_ms(), 2)
            try:
                await asyncio.wait_for(pending.superseded.wait(), record.debounce_ms / 1000)
            except asyncio.TimeoutError:
                pass
            if pending.token.cancelled:  # a newer request (or an edit) came during the debounce
                record.outcome = "cancelled" if pending.cancelled_at else "superseded"
                self._stopped_after(pending)
                return answer("")
            large = len(text) > self.max_buffer_chars
            pending.job = job = CompletionJob(self._path(uri), text, offset, convert.options_for(settings),
                                              pending.token, repo_context=not large)
            submitted = time.monotonic()
            future = self.worker.complete(job)
            future.add_done_callback(lambda _: self._loop_call(self._stopped_after, pending))
            result = await asyncio.wrap_future(future)
            record.queued_ms = round(((job.started or submitted) - submitted) * 1000, 2)
            if result is None or result.completion.stop_reason == "cancelled" or pending.token.cancelled:
                record.outcome = "cancelled" if pending.cancelled_at else "superseded"
                if result is not None:
                    record.engine_ms, record.stop_reason = result.engine_ms, result.completion.stop_reason
                return answer("")
            record.outcome = "completed"
            record.engine_ms, record.stop_reason = result.engine_ms, result.completion.stop_reason
            self.debounce.finished(result.engine_ms)
            explain = convert.explain(result, job.options.context if not large else "infile")
            self.cache.put(key, Cached(result.text, explain))
            self._last[uri] = (key, explain)
            return answer(result.text)
        finally:
            if self._inflight.get(uri) is pending:
                del self._inflight[uri]

    def _loop_call(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: we are exiting
            pass

    def _stopped_after(self, pending: Pending) -> None:
        """Stats: how long the engine kept at a request after it was superseded or cancelled."""
        job = pending.job
        for attr, at in (("ran_after_superseded_ms", pending.superseded_at if not pending.cancelled_at else None),
                         ("ran_after_cancel_ms", pending.cancelled_at)):
            if at is None:
                continue
            ran = 0.0
            if job is not None and job.started is not None and job.finished is not None:
                ran = max(0.0, (job.finished - max(at, job.started)) * 1000)
            setattr(pending.record, attr, round(ran, 2))

    # -- commands --------------------------------------------------------------------------------------------

    async def show_context(self, arguments: Any) -> dict:
        try:
            uri, position = convert.parse_position_argument(arguments)
        except ValueError as e:
            raise JsonRpcInvalidParams(str(e)) from None
        doc, offset, position = self._locate(uri, position)
        text = doc.source
        back = self.cache.prefix_chars + self.cache.max_typed
        key = self.cache.key(uri, self.generation, text[max(0, offset - back): offset],
                             text[offset: offset + self.cache.suffix_chars])
        last = self._last.get(uri)
        if last is not None and last[0] == key:
            return last[1]
        cached = self.cache.peek(key)
        if cached is not None:
            return cached.explain
        large = len(text) > self.max_buffer_chars or "\x00" in text
        t0 = time.perf_counter()
        parts, ctx, tokens, mode = await asyncio.wrap_future(
            self.worker.context(self._path(uri), text, offset, convert.options_for(self.settings), not large))
        ms = round((time.perf_counter() - t0) * 1000, 2)
        timings = {"context": ms}
        if ctx is not None:
            timings.update({f"provider.{k}": round(v, 2) for k, v in ctx.timings_ms.items()})
        return {
            "completion": None,  # no completion was made at this position
            "records": [convert.record_json(r) for r in ctx.records] if ctx is not None else [],
            "prompt_tokens": tokens,
            "timings_ms": timings,
            "stop_reason": None,
            "context_mode": mode,
        }

    def stats(self, arguments: Any) -> dict:
        reset = bool(arguments and isinstance(arguments[0], dict) and arguments[0].get("reset"))
        out = {
            "requests": [r.to_json() for r in self.requests.records()],
            "summary": self.requests.summary(),
            "debounce": {"floor_ms": self.debounce.floor_ms, "delay_ms": round(self.debounce.delay_ms(), 2),
                         "latency_ms": self.debounce.latency_ms, "gap_ms": self.debounce.gap_ms},
            "cache": {"entries": len(self.cache)},
            "state": self.state,
            "model": self.model_name,
            "worker_alive": self.worker.alive,
        }
        if reset:
            self.requests.clear()
        return out


# ---------------------------------------------------------------------------------------------------------------
# Handlers: read params, call the server, return.


def initialize(ls: RepocompleteServer, params: types.InitializeParams) -> None:
    ls.initialize(params)


async def initialized(ls: RepocompleteServer, params: types.InitializedParams) -> None:
    await ls.initialized()


async def shutdown(ls: RepocompleteServer, params: None) -> None:
    await ls.stop_engine()


def did_open(ls: RepocompleteServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.opened(params.text_document.uri)


def did_change(ls: RepocompleteServer, params: types.DidChangeTextDocumentParams) -> None:
    ls.changed(params)


def did_close(ls: RepocompleteServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.closed(params.text_document.uri)


def did_save(ls: RepocompleteServer, params: types.DidSaveTextDocumentParams) -> None:
    ls.saved(params.text_document.uri)


async def did_change_configuration(ls: RepocompleteServer, params: types.DidChangeConfigurationParams) -> None:
    pull = ls.configuration_changed(params)
    if pull is not None:
        await pull


async def did_change_workspace_folders(ls: RepocompleteServer, params: types.DidChangeWorkspaceFoldersParams) -> None:
    await ls.workspace_folders_changed(params)


async def inline_completion(ls: RepocompleteServer, params: types.InlineCompletionParams):
    return await ls.complete(params.text_document.uri, params.position, types.TEXT_DOCUMENT_INLINE_COMPLETION)


async def completion(ls: RepocompleteServer, params: types.CompletionParams):
    return await ls.complete(params.text_document.uri, params.position, types.TEXT_DOCUMENT_COMPLETION)


async def show_context(ls: RepocompleteServer, *args) -> dict:
    return await ls.show_context(list(args))


def stats(ls: RepocompleteServer, *args) -> dict:
    return ls.stats(list(args))


def make_server(runtime: RuntimeConfig, context_config: ContextConfig, settings: Settings,
                make_model=None) -> RepocompleteServer:
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
                   types.CompletionOptions(trigger_characters=[".", "(", "["]))(completion)
    server.command(SHOW_CONTEXT)(show_context)
    server.command(STATS)(stats)
    return server
