"""When to ask the engine, and when not to: the adaptive debounce, the completion cache and per-request stats.

Pure bookkeeping with no protocol and no threads, so each piece is unit-tested alone.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass, field
from typing import Any


class Debounce:
    """How long a completion request that missed the cache waits before it starts engine work.

    With prefix reuse a keystroke costs the engine one new token of prefill plus decoding, and a request superseded
    by the next keystroke stops at its next decode step, so starting at once is usually cheapest. Waiting pays only
    when it saves engine work: a request started while the user is still typing runs until the next keystroke
    supersedes it, and that work is wasted. The delay is chosen from what was measured on recent requests that
    reached the engine (cache answers, such as typing through the ghost text or backspace-and-retype, never wait,
    cost the engine nothing and are not counted): for each, the gap g until the next such request, and its engine
    time e when it completed (else the median E of the completed ones: it was superseded or dropped).

    For a candidate delay d, each recorded request tells what would have happened to it: g <= d, it is dropped
    before it starts (no cost); g - d >= e, it is answered, and the user waited d longer; otherwise the engine worked
    g - d ms for an answer nobody sees. A request answered without the delay but not with it is a lost answer,
    weighed as `lost_answer_ms` (300: more than any wait). The delay minimises (added wait + wasted engine ms + lost
    answers) per request, candidates being the floor and each recorded gap (plus a margin) up to the cap; the floor
    wins ties, so with no waste to save there is no wait, and a delay never drops answers the user would have seen
    to save a burst's waste unless the bursts cost more. A request arriving after the editor was idle (more than
    `idle_ms` since the previous one) waits only the floor, and so does every request before enough has been
    timed. The floor is the `debounceMs` setting (default 0).
    """

    def __init__(self, floor_ms: float = 0, cap_ms: float = 300, window: int = 32, idle_ms: float = 1000,
                 min_samples: int = 4, margin_ms: float = 5, lost_answer_ms: float = 300):
        self.floor_ms = floor_ms
        self.lost_answer_ms = lost_answer_ms  # an answer the user would have seen is worth more than any wait
        self.cap_ms = cap_ms
        self.idle_ms = idle_ms
        self.min_samples = min_samples
        self.margin_ms = margin_ms
        # (gap to the next request in ms; the request's engine ms, None when it did not complete)
        self.gaps: deque[tuple[float, float | None]] = deque(maxlen=window)
        self.engine: deque[float] = deque(maxlen=max(4, window // 2))  # ms, completed requests
        self._last_arrival: float | None = None
        self._last_engine: float | None = None  # the latest request's engine time, once it completed
        self._current_gap: float | None = None  # the gap before the latest arrival (ms)

    def arrived(self, now: float | None = None) -> None:
        """A completion request that reaches the engine (it missed the cache) arrived (monotonic seconds)."""
        now = time.monotonic() if now is None else now
        if self._last_arrival is not None:
            gap = (now - self._last_arrival) * 1000
            self._current_gap = gap
            self.gaps.append((round(gap, 2), self._last_engine))
        self._last_arrival = now
        self._last_engine = None

    def finished(self, engine_ms: float) -> None:
        """The latest request completed in this long (superseded or cancelled ones say nothing about latency)."""
        self.engine.append(engine_ms)
        self._last_engine = engine_ms

    @property
    def latency_ms(self) -> float | None:
        """E: the median engine time of recent completed requests."""
        return statistics.median(self.engine) if self.engine else None

    def cost(self, delay: float) -> dict[str, float]:
        """Per recorded request, on average, had requests waited `delay` ms: the wait added to answered requests,
        the engine ms wasted on requests superseded while they ran, and the answers lost (shown without the delay,
        not with it), each weighed as `lost_answer_ms`."""
        median = self.latency_ms
        wait = waste = lost = 0.0
        for g, e in self.gaps:
            needed = e if e is not None else median
            shown_at_floor = needed is not None and g - self.floor_ms >= needed
            if g <= delay:  # dropped before it started
                lost += shown_at_floor
                continue
            ran = g - delay
            if needed is not None and ran >= needed:
                wait += delay
            else:
                waste += ran
                lost += shown_at_floor
        n = max(1, len(self.gaps))
        return {"wait_ms": wait / n, "wasted_ms": waste / n, "lost_answers": lost / n}

    def _total(self, delay: float) -> float:
        c = self.cost(delay)
        return c["wait_ms"] + c["wasted_ms"] + c["lost_answers"] * self.lost_answer_ms

    def delay_ms(self) -> float:
        floor = self.floor_ms
        if self.latency_ms is None or len(self.gaps) < self.min_samples:
            return floor
        if self._current_gap is not None and self._current_gap >= self.idle_ms:
            return floor  # the first keystroke after a pause starts at once
        cap = max(self.cap_ms, floor)
        candidates = sorted({floor} | {g + self.margin_ms for g, _ in self.gaps if floor < g + self.margin_ms <= cap})
        best, best_cost = floor, None
        for d in candidates:
            total = self._total(d)
            if best_cost is None or total < best_cost - 1e-9:
                best, best_cost = d, total
        return best

    def report(self) -> dict:
        """What `repocomplete.stats` shows of the rule: its inputs and the chosen delay's expected cost."""
        delay = self.delay_ms()
        return {"floor_ms": self.floor_ms, "cap_ms": self.cap_ms, "delay_ms": round(delay, 2),
                "latency_ms": self.latency_ms, "gaps": len(self.gaps),
                "gap_ms_p50": round(statistics.median(g for g, _ in self.gaps), 2) if self.gaps else None,
                "expected_at_delay": {k: round(v, 2) for k, v in self.cost(delay).items()},
                "expected_without_delay": {k: round(v, 2) for k, v in self.cost(self.floor_ms).items()}}


@dataclass
class Cached:
    text: str
    explain: dict[str, Any]  # what showContext returns for it
    others: tuple[str, ...] = ()  # the other candidates (RuntimeConfig.candidates), offered after `text`


def approx_bytes(obj: Any) -> int:
    """Roughly the memory an object holds: the objects themselves and what they contain (strings, numbers, dicts,
    lists and tuples of them; anything else at its own size). Shared objects count once per reference."""
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(approx_bytes(k) + approx_bytes(v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        size += sum(approx_bytes(v) for v in obj)
    return size


class CompletionCache:
    """Recent completions by the text around the cursor, bounded in bytes (`max_bytes`: keys, texts and their
    showContext explanations together), least recently used dropped first.

    The key is (document uri, settings generation, the prefix's last `prefix_chars`, the suffix's first
    `suffix_chars`): deleting a character and typing it again finds the completion made before. A lookup also
    serves a user typing through the ghost text: if the characters typed since a cached completion are the start of
    that completion, the rest of it is the answer.
    """

    def __init__(self, max_bytes: int = 8 * 2**20, prefix_chars: int = 512, suffix_chars: int = 128,
                 max_typed: int = 64):
        self.max_bytes = max_bytes
        self.prefix_chars = prefix_chars
        self.suffix_chars = suffix_chars
        self.max_typed = max_typed
        self.used_bytes = 0
        self._items: OrderedDict[tuple, tuple[Cached, int]] = OrderedDict()  # key -> (entry, its bytes)

    def key(self, uri: str, generation: int, prefix: str, suffix: str) -> tuple:
        return (uri, generation, prefix[-self.prefix_chars :], suffix[: self.suffix_chars])

    def around(self, text: str, offset: int) -> tuple[str, str]:
        """The prefix and suffix of a cursor that `key` and `get` need (the prefix long enough to find a completion
        typed through)."""
        back = self.prefix_chars + self.max_typed
        return text[max(0, offset - back) : offset], text[offset : offset + self.suffix_chars]

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: tuple, item: Cached) -> None:
        if not item.text:
            return  # an empty answer is not worth keeping: the next request may do better (e.g. after indexing)
        self._drop(key)
        size = approx_bytes(key) + approx_bytes(item.text) + approx_bytes(item.explain)
        size += approx_bytes(item.others) if item.others else 0
        if size > self.max_bytes:
            return  # larger than the whole cache: not kept
        self._items[key] = (item, size)
        self.used_bytes += size
        self.resize(self.max_bytes)

    def resize(self, max_bytes: int) -> None:
        """A new bound: the least recently used entries go until the rest fit."""
        self.max_bytes = max_bytes
        while self.used_bytes > self.max_bytes:
            self._drop(next(iter(self._items)))

    def _drop(self, key: tuple) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.used_bytes -= old[1]

    def peek(self, key: tuple) -> Cached | None:
        hit = self._items.get(key)
        return hit[0] if hit is not None else None

    def get(self, uri: str, generation: int, prefix: str, suffix: str) -> tuple[Cached, str] | None:
        """(the cached entry, the text to show now), or None."""
        key = self.key(uri, generation, prefix, suffix)
        hit = self.peek(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit, hit.text
        for k in range(1, min(self.max_typed, len(prefix)) + 1):
            typed = prefix[-k:]
            earlier = self.peek(self.key(uri, generation, prefix[:-k], suffix))
            if earlier is not None and len(earlier.text) > k and earlier.text.startswith(typed):
                others = tuple(o[k:] for o in earlier.others if len(o) > k and o.startswith(typed))
                rest = Cached(earlier.text[k:], earlier.explain, others)
                self.put(key, rest)
                return rest, rest.text
        return None

    def clear(self) -> None:
        self._items.clear()
        self.used_bytes = 0


@dataclass
class RequestStats:
    """One completion request, as the `repocomplete.stats` command reports it (times in ms)."""

    id: int
    uri: str
    method: str  # textDocument/inlineCompletion | textDocument/completion
    arrival: float  # unix time (s)
    outcome: str = "pending"  # completed | cached | superseded | cancelled | error | skipped
    debounce_ms: float = 0.0
    queued_ms: float | None = None  # submitted to the worker -> started there
    engine_ms: float | None = None  # the completer's own time
    total_ms: float | None = None  # arrival -> response
    stop_reason: str | None = None
    chars: int = 0  # characters of completion returned
    # The engine's account of a completed request: tokens generated, its prefill and decode times, prompt tokens
    # and how many of them the prefix cache held, speculative draft tokens proposed and taken.
    tokens: int | None = None
    prefill_ms: float | None = None
    decode_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    draft_tokens: int | None = None
    accepted_tokens: int | None = None
    # Superseded (a newer request for the document arrived) or cancelled ($/cancelRequest): how long the engine
    # kept working on this one after that; 0 when it had not started.
    ran_after_superseded_ms: float | None = None
    ran_after_cancel_ms: float | None = None
    wasted_ms: float | None = None  # superseded or cancelled after it started: the engine time spent for nothing
    started: float = field(default_factory=time.monotonic, repr=False)  # monotonic arrival (not reported)

    def finish(self, now: float | None = None) -> None:
        """The response goes out now: total_ms is set."""
        now = time.monotonic() if now is None else now
        self.total_ms = round((now - self.started) * 1000, 2)

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("started")
        return out


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


class RequestLog:
    def __init__(self, keep: int = 5000):
        self._records: deque[RequestStats] = deque(maxlen=keep)
        self._next = 1

    def start(self, uri: str, method: str) -> RequestStats:
        record = RequestStats(self._next, uri, method, arrival=time.time())
        self._next += 1
        self._records.append(record)
        return record

    def records(self) -> list[RequestStats]:
        return list(self._records)

    def clear(self) -> None:
        self._records.clear()

    def summary(self) -> dict:
        records = [r for r in self._records if r.outcome != "pending"]
        outcomes: dict[str, int] = {}
        for r in records:
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
        done = [r for r in records if r.outcome == "completed" and r.total_ms is not None and r.engine_ms is not None]
        overhead = [r.total_ms - r.engine_ms - r.debounce_ms for r in done]
        after = [r.ran_after_superseded_ms for r in records if r.ran_after_superseded_ms is not None]
        return {
            "requests": len(records),
            "outcomes": outcomes,
            "total_ms_p50": _pct([r.total_ms for r in done], 0.5),
            "total_ms_p95": _pct([r.total_ms for r in done], 0.95),
            "engine_ms_p50": _pct([r.engine_ms for r in done], 0.5),
            "overhead_ms_p50": _pct(overhead, 0.5),  # latency - engine - debounce: what the server itself costs
            "overhead_ms_p95": _pct(overhead, 0.95),
            "superseded_max_ran_after_ms": max(after) if after else None,
            # The debounce's trade, measured: engine ms spent on answers nobody saw, and wait added to those shown.
            "wasted_engine_ms": round(sum(r.wasted_ms or 0.0 for r in records), 2),
            "added_wait_ms": round(sum(r.debounce_ms for r in done), 2),
        }
