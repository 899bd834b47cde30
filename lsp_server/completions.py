"""Completion requests from arrival to answer: cache, debounce, supersede and cancel, the engine job, stats.

One request per document is in flight: a newer one for the same document, an edit to it, or `$/cancelRequest`
cancels the older one (during its debounce, or inside the engine's decode loop through its CancelToken). The
bookkeeping itself (the debounce, the cache, the records) is `lsp_server.scheduling`; the engine work is
`lsp_server.worker`'s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lsprotocol import types

from repocomplete.lsp_server import convert
from repocomplete.lsp_server.config import Settings
from repocomplete.lsp_server.documents import BINARY, Documents, fs_path
from repocomplete.lsp_server.scheduling import Cached, CompletionCache, Debounce, RequestLog, RequestStats
from repocomplete.lsp_server.worker import CompletionJob, EngineWorker, NotReady
from repocomplete.model_runtime.engine import CancelToken
from repocomplete.pipeline import CompletionOptions

log = logging.getLogger(__name__)

# A first completion (nothing of the prompt cached) that takes longer than this to read its prompt is "too slow":
# the user is told once, with the setting that shortens it.
SLOW_COLD_PREFILL_S = 3.0


def slow_machine_advice(completion, settings: Settings, capability: str) -> str | None:
    """One line for the user when this machine reads prompts of the configured size too slowly, else None.

    The cold cost is estimated from this request's own prefill speed and the whole prompt's length, so it also
    fires on a request that found most of its prompt cached."""
    speed = completion.prefill_tok_s
    if speed is None:
        return None
    cold_s = completion.prompt_tokens / speed
    if cold_s < SLOW_COLD_PREFILL_S:
        return None
    lower = (f"lower repocomplete.contextBudget (now {settings.context_budget} tokens)"
             if settings.context == "repo" else "")
    return (f"this CPU ({capability}) reads prompts at {speed:.0f} tokens/s: a first completion with "
            f"{completion.prompt_tokens} prompt tokens takes about {cold_s:.1f} s. For faster first completions "
            + (f"{lower} or " if lower else "") + 'set repocomplete.context to "none".')


@dataclass
class Pending:
    """A completion request between arrival and answer."""

    record: RequestStats
    token: CancelToken = field(default_factory=CancelToken)
    superseded: asyncio.Event = field(default_factory=asyncio.Event)
    job: CompletionJob | None = None
    superseded_at: float | None = None
    cancelled_at: float | None = None

    def stop(self, cancelled: bool = False) -> None:
        """Superseded (a newer request, an edit, settings) or cancelled ($/cancelRequest): the engine stops."""
        if cancelled:
            self.cancelled_at = time.monotonic()
        elif self.superseded_at is None:
            self.superseded_at = time.monotonic()
        self.token.cancel()
        self.superseded.set()

    @property
    def stopped_outcome(self) -> str:
        return "cancelled" if self.cancelled_at else "superseded"

    def record_ran_after(self) -> None:
        """Stats: how long the engine kept at the request after it was superseded or cancelled."""
        job = self.job
        for attr, at in (("ran_after_superseded_ms", self.superseded_at if not self.cancelled_at else None),
                         ("ran_after_cancel_ms", self.cancelled_at)):
            if at is None:
                continue
            ran = 0.0
            if job is not None and job.started is not None and job.finished is not None:
                ran = max(0.0, (job.finished - max(at, job.started)) * 1000)
            setattr(self.record, attr, round(ran, 2))
        stopped = self.superseded_at is not None or self.cancelled_at is not None
        if stopped and job is not None and job.started is not None and job.finished is not None:
            self.record.wasted_ms = round((job.finished - job.started) * 1000, 2)  # its answer is never shown


class Completions:
    def __init__(self, worker: EngineWorker, documents: Documents, tell: Callable[[str, types.MessageType], None],
                 advise: Callable[[str], None] = lambda message: None):
        """`advise(message)` is told once when the machine is too slow for the configured context size."""
        self.worker = worker
        self.documents = documents
        self._tell = tell
        self._advise = advise
        self.advice: str | None = None
        self.settings = Settings()
        self.options = CompletionOptions()
        self.generation = 0  # bumped on every settings change: part of the cache key
        self.debounce = Debounce(self.settings.debounce_ms)
        self.cache = CompletionCache(self.settings.completion_cache_bytes)
        self.requests = RequestLog()
        self._inflight: dict[str, Pending] = {}  # uri -> the newest completion request for that document
        self._by_msg_id: dict[Any, Pending] = {}
        self._last: dict[str, tuple[tuple, dict]] = {}  # uri -> (cache key, explain) of its last completion
        self._warned: set[tuple[str, str]] = set()

    def configure(self, settings: Settings, options: CompletionOptions) -> None:
        """New settings (resolved: `options` is what requests ask the engine for)."""
        self.settings, self.options = settings, options
        self.generation += 1
        self.advice = None  # judged again for the new settings
        self.debounce.floor_ms = settings.debounce_ms
        self.cache.resize(settings.completion_cache_bytes)
        if not settings.enabled:
            self.stop_all()

    def model_loaded(self) -> None:
        self.cache.clear()

    # -- stopping requests ---------------------------------------------------------------------------------------

    def stale(self, uri: str) -> None:
        """The document changed: its request in flight is for a text that is gone."""
        pending = self._inflight.get(uri)
        if pending is not None:
            pending.stop()

    def forget(self, uri: str) -> None:
        """The document closed."""
        self.stale(uri)
        self._last.pop(uri, None)

    def stop_all(self) -> None:
        for pending in list(self._inflight.values()):
            pending.stop()

    def cancel_request(self, msg_id) -> None:
        pending = self._by_msg_id.get(msg_id)
        if pending is not None:
            pending.stop(cancelled=True)

    # -- requests --------------------------------------------------------------------------------------------------

    def _cache_key(self, uri: str, text: str, offset: int, generation: int) -> tuple[tuple, str, str]:
        prefix, suffix = self.cache.around(text, offset)
        return self.cache.key(uri, generation, prefix, suffix), prefix, suffix

    async def complete(self, uri: str, position: types.Position, method: str, msg_id=None):
        """The completion for a cursor, or None when there is nothing to show. Both completion methods come here."""
        record = self.requests.start(uri, method)
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
            record.finish()
            self._by_msg_id.pop(msg_id, None)

    async def _complete(self, uri, position, method, record: RequestStats, msg_id):
        doc, offset, position = self.documents.locate(uri, position)
        settings, options, generation = self.settings, self.options, self.generation
        if not settings.enabled or doc.language_id not in settings.languages:
            record.outcome = "skipped"
            return None
        text = doc.source
        problem = self.documents.context_problem(uri, text)
        if problem == BINARY:
            record.outcome = "skipped"
            self._warn_once(uri, problem, f"{uri} holds NUL bytes (binary?): no completions there")
            return None

        def answer(completion: str, others: tuple[str, ...] = ()):
            record.chars = len(completion)
            if method == types.TEXT_DOCUMENT_INLINE_COMPLETION:  # every candidate: the editor cycles through them
                return [item for text in (completion, *others) for item in convert.inline_items(text, position)]
            return convert.completion_list(completion, text, offset, position, doc)

        key, prefix, suffix = self._cache_key(uri, text, offset, generation)
        hit = self.cache.get(uri, generation, prefix, suffix)
        if hit is not None:
            record.outcome = "cached"
            self._last[uri] = (key, hit[0].explain)
            return answer(hit[1], hit[0].others)

        self.debounce.arrived()  # only requests that reach the engine shape the delay
        pending = Pending(record)
        older = self._inflight.get(uri)
        if older is not None:
            older.stop()
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
                record.outcome = pending.stopped_outcome
                pending.record_ran_after()
                return answer("")
            pending.job = job = CompletionJob(fs_path(uri), text, offset, options, pending.token,
                                              repo_context=problem is None)
            submitted = time.monotonic()
            future = self.worker.complete(job)
            loop = asyncio.get_running_loop()
            future.add_done_callback(lambda _: _call_soon(loop, pending.record_ran_after))
            result = await asyncio.wrap_future(future)
            record.queued_ms = round(((job.started or submitted) - submitted) * 1000, 2)
            if result is not None:
                record.engine_ms, record.stop_reason = result.engine_ms, result.completion.stop_reason
                c = result.completion
                record.tokens, record.prompt_tokens, record.cached_tokens = (
                    c.generated_tokens, c.prompt_tokens, c.cached_tokens)
                record.prefill_ms, record.decode_ms = round(c.prefill_s * 1000, 2), round(c.decode_s * 1000, 2)
                record.draft_tokens, record.accepted_tokens = c.draft_tokens, c.accepted_tokens
            if result is None or result.completion.stop_reason == "cancelled" or pending.token.cancelled:
                record.outcome = pending.stopped_outcome
                return answer("")
            record.outcome = "completed"
            self.check_speed(result.completion)
            self.debounce.finished(result.engine_ms)
            explain = convert.explain(result, options.context if problem is None else "infile")
            others = tuple(c.text for c in result.candidates[1:])
            self.cache.put(key, Cached(result.text, explain, others))
            self._last[uri] = (key, explain)
            return answer(result.text, others)
        finally:
            if self._inflight.get(uri) is pending:
                del self._inflight[uri]

    def check_speed(self, completion) -> None:
        """Tell the user once (per settings) when this completion shows the machine too slow for the context size."""
        if self.advice is None:
            import torch

            advice = slow_machine_advice(completion, self.settings, torch.backends.cpu.get_cpu_capability())
            if advice is not None:
                self.advice = advice
                self._advise(advice)

    def _warn_once(self, uri: str, what: str, message: str) -> None:
        if (uri, what) not in self._warned:
            self._warned.add((uri, what))
            self._tell(message, types.MessageType.Info)

    # -- commands ------------------------------------------------------------------------------------------------

    async def show_context(self, uri: str, position: types.Position) -> dict:
        """The explanation of the last completion at a position, or the context the engine would use there."""
        doc, offset, position = self.documents.locate(uri, position)
        text = doc.source
        key, _, _ = self._cache_key(uri, text, offset, self.generation)
        last = self._last.get(uri)
        if last is not None and last[0] == key:
            return last[1]
        cached = self.cache.peek(key)
        if cached is not None:
            return cached.explain
        t0 = time.perf_counter()
        parts, ctx, tokens, mode = await asyncio.wrap_future(self.worker.context(
            fs_path(uri), text, offset, self.options, self.documents.context_problem(uri, text) is None))
        return convert.explain_context(ctx, tokens, round((time.perf_counter() - t0) * 1000, 2), mode)

    def memory(self) -> dict:
        """What the bounded stores hold now, beside their bounds (read from the event loop: a snapshot)."""
        out = {"completion_cache_bytes": [self.cache.used_bytes, self.cache.max_bytes],
               "synced_documents": [len(self.documents.synced), self.documents.max_buffers]}
        engine = self.worker.completer.model
        pool = getattr(getattr(engine, "prefix_cache", None), "pool", None)
        if pool is not None:
            out["prefix_cache_bytes"] = [pool.used_bytes, pool.capacity_bytes]
        slab = getattr(engine, "slab", None)
        if slab is not None:
            # The slab reserves its bound at once; memory holds the rows written (slab_bytes), not the reservation.
            out["slab_bytes"] = slab.resident_bytes()
            out["slab_reserved_bytes"] = slab.allocated_bytes()
            out["slab_rows"] = [slab.length, slab.max_tokens]
        return out

    def stats(self, reset: bool = False) -> dict:
        out = {
            "requests": [r.to_json() for r in self.requests.records()],
            "summary": self.requests.summary(),
            "debounce": self.debounce.report(),
            "cache": {"entries": len(self.cache), "bytes": self.cache.used_bytes, "max_bytes": self.cache.max_bytes},
            "memory": self.memory(),
        }
        if reset:
            self.requests.clear()
        return out


def _call_soon(loop: asyncio.AbstractEventLoop, fn, *args) -> None:
    """`fn` on the event loop, from the engine thread."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: we are exiting
        pass
