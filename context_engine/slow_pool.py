"""The worker process for the slow, pure-Python providers (jedi): one call at a time, each within a budget.

jedi is slow on a file's first visit, can take minutes on pathological input and is not thread-safe: it runs in a
process of its own, so it neither holds the GIL against the fast providers nor races with itself. A call that
runs past its budget has its process killed: the call answers `SlowCallTimeout` and a fresh process takes the
next one, so no request waits behind a stuck call. (A process's start, interpreter and imports, is not counted in
a call's budget.)

The process exits with its parent: Linux kills it when the thread that started it ends (PR_SET_PDEATHSIG), and
everywhere a thread in it exits once os.getppid() changes. A server killed by its client leaves no orphan.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future

log = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0  # a fresh process has this long to start (a cold interpreter on a loaded machine)
PARENT_POLL_S = 0.2  # how often the process checks that its parent is alive
_PR_SET_PDEATHSIG = 1


class SlowCallTimeout(Exception):
    """A call ran past its budget (its process was killed), or its process died or did not start."""


class SlowPool(Executor):
    """An Executor over one worker process; `budget_s` (None: no limit) bounds each call once it has started."""

    def __init__(self, budget_s: float | None, initializer: Callable[[], None] | None = None):
        self.budget_s = budget_s
        self.initializer = initializer  # run in the process before its first call (picklable)
        self.restarts = 0  # processes killed because a call overran, or found dead
        self._cv = threading.Condition()
        self._jobs: deque[tuple[Callable, tuple, dict, Future]] = deque()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._proc = None  # the multiprocessing Process, on the dispatching thread only (killed from any)
        self._conn = None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.is_alive() else None

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise RuntimeError("cannot submit to a closed SlowPool")
            self._jobs.append((fn, args, kwargs, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._dispatch, name="repocomplete-slow", daemon=True)
                self._thread.start()
            self._cv.notify()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop: the process is killed now (a call in progress answers SlowCallTimeout), queued calls are
        cancelled if asked (else they are still refused: the process is gone)."""
        with self._cv:
            self._closed = True
            jobs = list(self._jobs) if cancel_futures else []
            if cancel_futures:
                self._jobs.clear()
            self._cv.notify_all()
        for *_, future in jobs:
            future.cancel()
        self._kill()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the dispatching thread ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            while True:
                with self._cv:
                    while not self._jobs and not self._closed:
                        self._cv.wait()
                    if self._closed:
                        break
                    fn, args, kwargs, future = self._jobs.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(self._call(fn, args, kwargs))
                except BaseException as e:  # the future carries it to the caller
                    future.set_exception(e)
        finally:
            with self._cv:
                left, self._jobs = list(self._jobs), deque()
            for *_, future in left:
                future.cancel()
            self._stop_process()

    def _call(self, fn, args, kwargs):
        conn = self._ensure_process()
        conn.send((fn, args, kwargs))
        if not conn.poll(self.budget_s):
            self._stop_process()
            self.restarts += 1
            log.info("slow provider call over its budget of %.3g s: its process was killed", self.budget_s)
            raise SlowCallTimeout(f"over its budget of {self.budget_s:g} s")
        try:
            ok, value = conn.recv()
        except (EOFError, OSError) as e:  # it died: killed by shutdown, by the system, or crashed
            self._stop_process()
            self.restarts += 1
            raise SlowCallTimeout(f"the worker process ended ({type(e).__name__})") from None
        if ok:
            return value
        raise value

    def _ensure_process(self):
        if self._proc is not None and self._proc.is_alive():
            return self._conn
        self._stop_process()
        if self._closed:
            raise SlowCallTimeout("the pool is closed")
        ctx = mp.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_serve, args=(theirs, os.getpid(), self.initializer), name="repocomplete-slow",
                           daemon=True)
        proc.start()
        theirs.close()
        self._proc, self._conn = proc, ours
        if self._closed:  # shutdown came while it started: _kill saw no process
            self._stop_process()
            raise SlowCallTimeout("the pool is closed")
        try:
            ready = ours.poll(START_TIMEOUT_S) and ours.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self._stop_process()
            raise SlowCallTimeout("the worker process did not start")
        return ours

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.pid is not None:
            try:
                proc.kill()
            except (OSError, ValueError):  # already gone, or closed
                pass

    def _stop_process(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if proc is not None:
            try:
                proc.kill()
                proc.join(5)
                proc.close()
            except (OSError, ValueError):
                pass
        if conn is not None:
            conn.close()


# -- in the worker process -----------------------------------------------------------------------------------------


def _serve(conn, parent_pid: int, initializer: Callable[[], None] | None) -> None:
    _exit_with_parent(parent_pid)
    if initializer is not None:
        initializer()
    conn.send("ready")
    while True:
        try:
            fn, args, kwargs = conn.recv()
        except (EOFError, OSError):  # the pool closed its end
            return
        try:
            answer = (True, fn(*args, **kwargs))
        except BaseException as e:
            answer = (False, e)
        try:
            conn.send(answer)
        except Exception as e:  # an answer that does not pickle
            conn.send((False, RuntimeError(f"unpicklable answer: {type(e).__name__}: {e}")))


def _exit_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except Exception:  # no libc prctl: the watching thread below still ends it
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    if os.getppid() != parent_pid:  # the parent died before we were watching
        os._exit(0)
    threading.Thread(target=watch, name="repocomplete-parent-watch", daemon=True).start()
