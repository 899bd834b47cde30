"""The jedi providers' worker process: a call past its budget kills it and a fresh one serves the next; it never
outlives the pool or its parent process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import process_alive, wait_gone
from repocomplete.context_engine.slow_pool import SlowCallTimeout, SlowPool


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_a_call_past_its_budget_is_killed_and_the_next_runs_in_a_fresh_process():
    pool = SlowPool(budget_s=0.5)
    try:
        first = pool.submit(os.getpid).result(timeout=60)  # the start is not counted in a call's budget
        stuck = pool.submit(time.sleep, 60)
        after = pool.submit(os.getpid)  # queued behind the stuck call
        t0 = time.monotonic()
        with pytest.raises(SlowCallTimeout):
            stuck.result(timeout=30)
        assert time.monotonic() - t0 < 10
        assert not wait_gone([first], 2), "the stuck process was not killed"
        second = after.result(timeout=60)
        assert second != first and pool.restarts == 1
        assert pool.submit(sum, [1, 2]).result(timeout=10) == 3  # and it serves on
        with pytest.raises(ZeroDivisionError):  # a call's own error comes back as itself
            pool.submit(divmod, 1, 0).result(timeout=10)
        assert pool.pid == second
    finally:
        pool.shutdown()


def test_shutdown_kills_the_process_at_once():
    pool = SlowPool(budget_s=None)
    pid = pool.submit(os.getpid).result(timeout=60)
    busy = pool.submit(time.sleep, 60)
    queued = pool.submit(os.getpid)
    time.sleep(0.2)
    t0 = time.monotonic()
    pool.shutdown(wait=False, cancel_futures=True)
    assert time.monotonic() - t0 < 1
    assert not wait_gone([pid], 2)
    with pytest.raises(SlowCallTimeout):
        busy.result(timeout=5)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit(os.getpid)


PARENT = textwrap.dedent("""
    import os, sys, time
    from repocomplete.context_engine.slow_pool import SlowPool
    pool = SlowPool(budget_s=None)
    print(pool.submit(os.getpid).result(timeout=60), flush=True)
    pool.submit(time.sleep, 60)  # busy when its parent dies
    time.sleep(60)
""")


def test_the_process_exits_with_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
        time.sleep(0.3)
        assert process_alive(pid)
        parent.send_signal(signal.SIGKILL)  # no cleanup runs in the parent
        parent.wait(10)
        assert not wait_gone([pid], 2), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
