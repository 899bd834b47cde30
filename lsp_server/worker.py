"""The engine thread: the one thread that touches the completer (model, context engines, buffers).

The Completer and its ContextEngines are not built for concurrent calls, so every engine call runs here, one at a
time, while the event loop keeps reading messages (`$/cancelRequest`, didChange) and answering. Jobs run in order;
a job whose future was cancelled before it started is skipped, and a completion whose CancelToken is set stops at
the engine's next decode step. Editor buffers are coalesced: a flood of didChange leaves one pending text per file,
applied before the next job that reads them (repository context, showContext, indexing), so such a job always sees
the latest buffers. An in-file completion reads only its own text: it runs first, and the buffers are applied once
the thread has had no job for BUFFER_IDLE_S, between keystrokes rather than on their critical path.
"""

from __future__ import annotations

import atexit
import copy
import gc
import logging
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repocomplete.pipeline import Completer, CompletionOptions, CompletionResult
from repocomplete.model_runtime.engine import CancelToken

log = logging.getLogger(__name__)


def settle_heap() -> None:
    """After a long-lived load (a model, a workspace's index): collect, then move what survives out of the cyclic
    collector's view (`gc.freeze`), so a full collection while typing does not walk the model's and the index's
    objects (one took 25 ms of a 5,000-line file's edit). What was frozen before is unfrozen first, so a model or
    workspace dropped since is collected, not kept."""
    global _unfreeze_at_exit
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    if not _unfreeze_at_exit:  # (at exit, what is frozen would never be finalized: native bindings report leaks)
        atexit.register(gc.unfreeze)
        _unfreeze_at_exit = True


_unfreeze_at_exit = False


# How long pending buffers wait for a job before the idle thread applies them (a job that reads them applies them
# first; one that does not runs before them).
BUFFER_IDLE_S = 0.05

WORKSPACE_FOLDER = "the editor's workspace folder"  # the root reason of the folders the client names


class NotReady(Exception):
    """No model loaded (still loading, or loading failed)."""


@dataclass
class CompletionJob:
    path: str
    text: str  # the document as it was when the request arrived
    offset: int
    options: CompletionOptions
    token: CancelToken = field(default_factory=CancelToken)
    repo_context: bool = True  # False: the file is too large to index; in-file context only
    started: float | None = None  # monotonic, set on the engine thread
    finished: float | None = None


class EngineWorker:
    def __init__(self, completer: Completer):
        self.completer = completer
        self._cv = threading.Condition()
        self._jobs: deque[tuple[Callable[[], Any], Future]] = deque()
        self._buffers: dict[str, tuple[str | None, int | None]] = {}  # path -> (text | None to clear, edited line)
        self._stopping = False
        self._stop_event = threading.Event()  # also asked by an index build between two files
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="repocomplete-engine", daemon=True)

    # -- the thread ----------------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, fn: Callable[[], Any], needs_buffers: bool = True) -> Future:
        """Run `fn` on the thread. `needs_buffers` False: it does not read the context engine's buffers (an in-file
        completion), so pending buffers wait until the thread is idle instead of delaying it."""
        future: Future = Future()
        with self._cv:
            if self._stopping:
                future.cancel()
                return future
            self._jobs.append((fn, future, needs_buffers))
            self._cv.notify()
        return future

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._jobs and not self._buffers:
                    self._cv.wait()
                if self._stopping:
                    break
                # Only buffers: keep them a moment while keystrokes come, so that an in-file completion never
                # queues behind the index's re-parse of the line just typed.
                deadline = time.monotonic() + BUFFER_IDLE_S
                while not self._jobs and not self._stopping and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                if self._stopping:
                    break
                job = self._jobs.popleft() if self._jobs else None
                buffers = {}
                if job is None or job[2]:
                    buffers, self._buffers = self._buffers, {}
            for path, (text, edited_line) in buffers.items():
                self._apply_buffer(path, text, edited_line)
            if job is None:
                continue
            fn, future, _ = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as e:  # the future carries it to the awaiting handler
                future.set_exception(e)
        self._close()  # the job that ran when stop() came has ended: the completer is ours to close

    def stop(self, timeout: float = 0.5) -> None:
        """Stop within about `timeout` seconds, whatever runs: queued jobs are cancelled, an index build stops at its
        next file, a completion at its next step (its CancelToken, set by the caller). The completer (model,
        context engines) is closed here once the thread is idle, else by the thread when its job ends; the child
        processes (jedi workers) are killed now either way."""
        with self._cv:
            self._stopping = True
            self._stop_event.set()
            jobs, self._jobs = list(self._jobs), deque()
            self._cv.notify_all()
        for _, future, _ in jobs:
            future.cancel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close()
        kill_children()

    def _close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self.completer.close()
        except Exception as e:
            log.warning("closing the completer: %s: %s", type(e).__name__, e)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- buffers -------------------------------------------------------------------------------------------

    def sync_buffer(self, path: str, text: str, edited_line: int | None = None) -> None:
        """An unsaved buffer for the context engine (the latest text per file wins; edited_line None: opened)."""
        with self._cv:
            previous = self._buffers.get(path)
            if previous is not None and previous[0] is not None and edited_line is not None and previous[1] is None:
                edited_line = None  # opened and edited before the thread got to it: still an open
            self._buffers[path] = (text, edited_line)
            self._cv.notify()

    def clear_buffer(self, path: str) -> None:
        with self._cv:
            self._buffers[path] = (None, None)
            self._cv.notify()

    def _apply_buffer(self, path: str, text: str | None, edited_line: int | None) -> None:
        try:
            workspace = self.completer.workspace_for(path, open_missing=False)
            if workspace is None:
                return  # its workspace is not open (yet): the server syncs open documents once it is
            if text is None:
                workspace.clear_buffer(path)
            else:
                workspace.set_buffer(path, text, edited_line)
        except Exception as e:  # a buffer the index cannot take costs its context, never the server
            log.warning("buffer %s: %s: %s", path, type(e).__name__, e)

    # -- engine work (each runs on the thread) ---------------------------------------------------------------

    def load_model(self, make_model: Callable[[], Any]) -> Future:
        def run():
            model = make_model()
            old, self.completer.model = self.completer.model, model
            close = getattr(old, "close", None)
            if close is not None:
                close()
            settle_heap()
            return model

        return self.submit(run)

    def open_workspace(self, root: Path, on_progress: Callable[[int, int], None] | None = None,
                       reason: str = WORKSPACE_FOLDER) -> Future:
        """Index a folder (stopped by stop(): the future then raises `Cancelled`); reason: why it is a workspace."""
        def run():
            workspace = self.completer.open_workspace(root, on_progress=on_progress,
                                                      cancelled=self._stop_event.is_set, reason=reason)
            settle_heap()
            return workspace

        return self.submit(run)

    def close_workspace(self, root: Path) -> Future:
        return self.submit(lambda: self.completer.close_workspace(root))

    def file_saved(self, path: str) -> Future:
        def run():
            workspace = self.completer.workspace_for(path, open_missing=False)
            if workspace is not None:
                workspace.file_changed(path)

        return self.submit(run)

    def complete(self, job: CompletionJob) -> Future:
        # Repository context reads the buffers (retrieval, neighbours); in-file context reads only the job's text.
        return self.submit(lambda: self._complete(job), needs_buffers=job.options.context == "repo" and job.repo_context)

    def _complete(self, job: CompletionJob) -> CompletionResult | None:
        job.started = time.monotonic()
        try:
            if job.token.cancelled:
                return None
            if self.completer.model is None:
                raise NotReady("the model is not loaded")
            options, workspace = self._options(job.path, job.options, job.repo_context)
            return self.completer.complete(job.path, job.text, job.offset, options, cancel=job.token,
                                           workspace=workspace)
        finally:
            job.finished = time.monotonic()

    def context(self, path: str, text: str, offset: int, options: CompletionOptions, repo_context: bool = True) -> Future:
        """The prompt parts and context for a position, without completing: (parts, Context | None, prompt tokens)."""
        def run():
            opts, workspace = self._options(path, options, repo_context)
            parts, ctx = self.completer.prompt_parts(path, text, offset, opts, workspace=workspace)
            encode = getattr(self.completer.model, "encode", None)
            tokens = len(encode(parts)[1].ids) if encode is not None else None
            return parts, ctx, tokens, opts.context

        return self.submit(run)

    def _options(self, path: str, options: CompletionOptions, repo_context: bool):
        """Repository context only for files in an open (indexed) workspace; in-file context otherwise."""
        options = copy.copy(options)
        workspace = None
        if options.context == "repo":
            workspace = self.completer.workspace_for(path, open_missing=False) if repo_context else None
            if workspace is None:
                options.context = "infile"
        return options, workspace


def kill_children() -> None:
    """Kill this process's multiprocessing children (the jedi workers): at exit none may outlive the server."""
    for child in multiprocessing.active_children():
        try:
            child.kill()
        except (OSError, ValueError):  # gone meanwhile
            pass
