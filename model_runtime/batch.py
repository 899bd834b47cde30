"""Several sequences decoded in lockstep after one shared prefix (Hydragen), for two features:

  * candidates: N completions of one prompt; the prompt is in the slab once, N sampled sequences follow it;
  * grouped batches: requests whose prompts share a long head; the head is prefilled once, each request's own tail
    and its decode run as rows of one batch.

The shared prefix stays in the engine's slab (row 0); each sequence's own K/V go to a `SuffixKV`, and every layer's
attention is `kernels.shared_prefix.shared_prefix_attention` over the two (`FastLlama.run` with an `Attend`).
Each sequence keeps its own `Decoding` (the same masks, stop rules and healing as `Engine._complete`). A sequence
that finishes leaves the batch at once (its suffix rows are dropped): on the CPU a step costs in proportion to its
rows, and selecting the surviving rows of a short suffix costs far less than one more layer pass.

A model without our forward (transformers' fallback) runs the sequences one after another over the slab, with the
same bookkeeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from repocomplete.kernels.shared_prefix import shared_prefix_attention
from repocomplete.model_runtime.decoding import Decoding
from repocomplete.model_runtime.engine import CancelToken, Completion, CompletionRequest, sample
from repocomplete.model_runtime.fast_llama import Attend, FastLlama
from repocomplete.model_runtime.kv_cache import SlabCache

# Candidates after the first are sampled: at the config's temperature, or at this one when the config is greedy (a
# common choice for code alternatives: varied, still mostly plausible), with nucleus sampling at CANDIDATE_TOP_P.
CANDIDATE_TEMPERATURE = 0.8
CANDIDATE_TOP_P = 0.95


class SuffixKV:
    """Each sequence's own K/V after the shared prefix, per layer: buffers [B, Hkv, capacity, D] that grow by
    doubling (positions prefix_len.. of every sequence)."""

    def __init__(self, n_layers: int, capacity: int = 32, dtype: torch.dtype | None = None):
        self.capacity, self.dtype = capacity, dtype
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.lengths = [0] * n_layers

    @property
    def length(self) -> int:
        return self.lengths[0]

    def update(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append layer i's new K/V [B, Hkv, n, D]; the layer's buffers (rows past the filled ones are unused)."""
        n, end = k.shape[2], self.lengths[i] + k.shape[2]
        if self.k[i] is None:
            shape = (k.shape[0], k.shape[1], max(self.capacity, end), k.shape[3])
            self.k[i] = k.new_empty(shape, dtype=self.dtype or k.dtype)
            self.v[i] = v.new_empty(shape, dtype=self.dtype or v.dtype)
        elif end > self.k[i].shape[2]:
            grown = max(end, 2 * self.k[i].shape[2])
            for bufs in (self.k, self.v):
                old = bufs[i]
                bufs[i] = old.new_empty(*old.shape[:2], grown, old.shape[3])
                bufs[i][:, :, : self.lengths[i]] = old[:, :, : self.lengths[i]]
        self.k[i][:, :, end - n : end] = k
        self.v[i][:, :, end - n : end] = v
        self.lengths[i] = end
        return self.k[i], self.v[i]

    def keep(self, rows: torch.Tensor) -> None:
        """Only these sequences (batch rows) go on."""
        for bufs in (self.k, self.v):
            for i, buf in enumerate(bufs):
                if buf is not None:
                    bufs[i] = buf.index_select(0, rows)


def shared_attend(slab: SlabCache, prefix_len: int, suffix: SuffixKV, scale: float) -> Attend:
    """Attention over the slab's first prefix_len rows (shared) and each sequence's suffix; stores the new K/V."""

    def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        start = suffix.lengths[i]
        keys, values = suffix.update(i, k, v)
        layer = slab.layers[i]
        if prefix_len == 0 or layer.k_buf is None:
            prefix_k = prefix_v = k.new_empty(1, k.shape[1], 0, k.shape[3])
        else:
            prefix_k, prefix_v = layer.k_buf[:1, :, :prefix_len], layer.v_buf[:1, :, :prefix_len]
        return shared_prefix_attention(q, prefix_k, prefix_v, keys, values, start, scale)

    return attend


class Lockstep:
    """B sequences after the slab's first prefix_len rows, stepped together through `FastLlama.run`."""

    def __init__(self, fast: FastLlama, slab: SlabCache, prefix_len: int, limit: int | None = None):
        self.fast, self.slab, self.prefix_len, self.limit = fast, slab, prefix_len, limit
        dtype = slab.layers[0].k_buf.dtype if slab.layers[0].k_buf is not None else None
        self.suffix = SuffixKV(len(fast.layers), dtype=dtype)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Run ids [B, n] (every sequence's next n tokens); the logits after each sequence's last one [B, vocab]."""
        start = self.prefix_len + self.suffix.length
        return self.fast.run(ids, start, shared_attend(self.slab, self.prefix_len, self.suffix, self.fast.scale))[:, -1]

    def keep(self, rows: list[int]) -> None:
        self.suffix.keep(torch.tensor(rows, dtype=torch.long, device=self.suffix.k[0].device))

    def room(self) -> int | None:
        return None if self.limit is None else self.limit - self.prefix_len - self.suffix.length


class SlabRun:
    """One sequence over the slab itself, after its first prefix_len rows: the fallback for any forward."""

    def __init__(self, forward, slab: SlabCache, prefix_len: int):
        self.forward, self.slab = forward, slab
        slab.truncate(prefix_len)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        self.slab.tokens += ids[0].tolist()
        return self.forward(ids, self.slab).unsqueeze(0)

    def keep(self, rows: list[int]) -> None:  # one sequence: it never goes on without itself
        assert rows == [0], rows

    def room(self) -> int | None:
        return self.slab.room()


# (sequence index, masked logits [vocab]) -> token
Pick = Callable[[int, torch.Tensor], int]


def decode_lockstep(run, states: Sequence[Decoding], logits: torch.Tensor, pick: Pick,
                    cancelled: Callable[[int], bool], deadline: float) -> None:
    """Decode every sequence from its first logits (row i of `logits` for states[i]) until each has a stop reason,
    in the order of checks `Engine._complete` makes: the token, cancellation, the time budget, the cache's room."""
    active = list(range(len(states)))
    while active:
        going: list[tuple[int, int]] = []  # (row, token) of the sequences that go on
        for row, i in enumerate(active):
            state = states[i]
            token = pick(i, state.mask(logits[row]))
            if state.push(token):
                continue
            if cancelled(i):
                state.stop("cancelled")
                continue
            going.append((row, token))
        if going and time.perf_counter() > deadline:
            for row, _ in going:
                states[active[row]].stop("time")
            return
        if going and run.room() == 0:
            for row, _ in going:
                states[active[row]].stop("length")
            return
        if len(going) < len(active) and going:
            run.keep([row for row, _ in going])
        active = [active[row] for row, _ in going]
        if active:
            logits = run.step(torch.tensor([[t] for _, t in going], dtype=torch.long, device=logits.device))


# ---------------------------------------------------------------------------------------------------------------
# Candidates: N completions of one prompt.


def unique_candidates(completions: Sequence[Completion]) -> list[Completion]:
    """Candidate 0 always (it is what `complete` returns, even empty); after it, no empty text and no text seen
    before."""
    out, seen = list(completions[:1]), {c.text for c in completions[:1]}
    for c in completions[1:]:
        if c.text.strip() and c.text not in seen:
            seen.add(c.text)
            out.append(c)
    return out


def complete_candidates(engine, request: CompletionRequest, n: int) -> list[Completion]:
    """Candidate 0 by `Engine._complete` (exactly `complete`'s answer); candidates 1..n-1 sampled (seed + i) in
    lockstep after the same prompt, which the slab then holds. The engine's lock is held by the caller."""
    first = engine._complete(request)
    if n <= 1 or first.stop_reason == "cancelled":
        return [first]
    cfg, parts = engine.config, request.parts
    t0 = time.perf_counter()
    ids, healed = engine.heal(engine.encode(parts)[1], parts)
    if engine.slab.tokens[: len(ids) - 1] != ids[:-1]:  # the shared prefix: `_complete` leaves it in the slab
        engine._run_prompt(ids)
    temperature = cfg.temperature if cfg.temperature > 0 else CANDIDATE_TEMPERATURE
    generators = [torch.Generator(device="cpu").manual_seed(cfg.seed + i) for i in range(1, n)]

    def pick(i: int, logits: torch.Tensor) -> int:
        return sample(logits, temperature, cfg.top_k, CANDIDATE_TOP_P, generators[i])

    states = [engine._decoding(request, ids, healed) for _ in range(n - 1)]
    cancel = request.cancel or CancelToken()
    deadline = t0 + cfg.time_budget_s
    last = torch.tensor([[ids[-1]]], dtype=torch.long, device=engine.device)  # its logits: each sequence's first
    if isinstance(engine.forward, FastLlama):
        run = Lockstep(engine.forward, engine.slab, len(ids) - 1, cfg.slab_tokens)
        decode_lockstep(run, states, run.step(last.expand(n - 1, 1)), pick, lambda i: cancel.cancelled, deadline)
    else:
        for i, state in enumerate(states):
            run = SlabRun(engine.forward, engine.slab, len(ids) - 1)
            decode_lockstep(run, [state], run.step(last), lambda _, logits, i=i: pick(i, logits),
                            lambda _: cancel.cancelled, deadline)
    decode_s = time.perf_counter() - t0
    rest = [Completion(text=s.final(parts.suffix), prompt_tokens=len(ids), cached_tokens=len(ids) - 1,
                       decode_s=decode_s, **s.report()) for s in states]
    return unique_candidates([first, *rest])


# ---------------------------------------------------------------------------------------------------------------
# Grouped batches: requests sharing a prompt head.


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# A member's own tail runs as rows of one dense step over the shared head, outside the prefix cache: worth it for
# short tails (the same file at several cursors), not for prompts that share a few blocks and differ for thousands
# of tokens (an evaluation suite's prompts, each with its own context), which run one by one through the prefix cache.
GROUP_MAX_TAIL = 256


def shared_groups(prompts: Sequence[Sequence[int]], eligible: Sequence[bool], min_shared: int,
                  max_tail: int = GROUP_MAX_TAIL) -> list[tuple[list[int], int]]:
    """The requests (indices) in prompt order, as (group, shared head length): neighbours that share at least
    min_shared leading tokens form a group, whose head leaves each prompt at least one token of its own (its last
    logits come from its own rows) and at most `max_tail`. An ineligible request, or one that shares too little, is a
    group of one (0)."""
    order = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    groups: list[list[int]] = []
    for i in order:
        head = groups[-1][0] if groups else None
        common = _common(prompts[head], prompts[i]) if head is not None else 0
        if (head is not None and eligible[i] and eligible[head] and common >= min_shared
                and max(len(prompts[head]), len(prompts[i])) - common <= max_tail):
            groups[-1].append(i)
        else:
            groups.append([i])
    out = []
    for group in groups:
        shared = 0
        if len(group) > 1:  # sorted: the first and the last share the least
            shared = min(_common(prompts[group[0]], prompts[group[-1]]), *(len(prompts[i]) - 1 for i in group))
        if len(group) > 1 and (shared < min_shared or max(len(prompts[i]) for i in group) - shared > max_tail):
            out += [([i], 0) for i in group]
        else:
            out.append((group, shared))
    return out


def complete_grouped(engine, requests: Sequence[CompletionRequest]) -> list[Completion]:
    """`Engine.complete_batch`: each group of requests sharing a head (of a block or more) prefills it once into the
    slab; its members' tails (those of equal length together) run as rows of one step and decode greedily in
    lockstep. The rest run one by one through `complete`, in prompt order (the prefix cache serves neighbours).
    Results are in the order of the requests, each the text `complete` gives it."""
    cfg = engine.config
    prepared = [engine.heal(engine.encode(r.parts)[1], r.parts) for r in requests]
    prompts = [ids for ids, _ in prepared]
    batchable = isinstance(engine.forward, FastLlama) and cfg.temperature <= 0 and engine._compiled is None
    eligible = [batchable and not r.monitors and not (r.cancel and r.cancel.cancelled) for r in requests]
    results: list[Completion | None] = [None] * len(requests)
    for group, shared in shared_groups(prompts, eligible, cfg.block_size):
        if shared == 0:
            results[group[0]] = engine.complete(requests[group[0]])
            continue
        with engine.lock, torch.inference_mode():
            _run_group(engine, requests, prepared, group, shared, results)
    return results  # type: ignore[return-value]


def _run_group(engine, requests, prepared, group: list[int], shared: int, results: list) -> None:
    cfg = engine.config
    t0 = time.perf_counter()
    _, cached = engine._run_prompt(list(prepared[group[0]][0][:shared]))
    head_s = time.perf_counter() - t0
    tails: dict[int, list[int]] = {}
    for i in group:
        tails.setdefault(len(prepared[i][0]) - shared, []).append(i)
    for members in tails.values():
        t1 = time.perf_counter()
        run = Lockstep(engine.forward, engine.slab, shared, cfg.slab_tokens)
        ids = torch.tensor([prepared[i][0][shared:] for i in members], dtype=torch.long, device=engine.device)
        logits = run.step(ids)
        t2 = time.perf_counter()
        states = [engine._decoding(requests[i], *prepared[i]) for i in members]
        cancels = [requests[i].cancel or CancelToken() for i in members]
        decode_lockstep(run, states, logits, lambda _, scores: int(torch.argmax(scores)),
                        lambda k, cancels=cancels: cancels[k].cancelled, t2 + cfg.time_budget_s)
        t3 = time.perf_counter()
        for state, i in zip(states, members):
            results[i] = Completion(
                text=state.final(requests[i].parts.suffix), prompt_tokens=len(prepared[i][0]),
                cached_tokens=cached if i == group[0] else shared,  # the group's first computed the head
                prefill_s=head_s + t2 - t1, decode_s=t3 - t2, **state.report())
