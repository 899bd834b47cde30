"""Sparse attention over long prompts: which K/V blocks each query reads (the policy) and the per-layer attention.

A long prompt is mostly repository context, of which a completion needs a few definitions. Reading all of it on
every decode step costs 70% of a step at 8k tokens on the 2-core EPYC (22 of 31 ms), and dense prefill attention
70% of a cold 8k prefill (17 of 25 s). Under the policy, a query at or past `threshold` attends to
  * the sink tokens (the first `sinks`), the recent window (the last `window`) and every block holding a token that
    is not repository context (the current file's prefix and suffix, the template, the generated tail): the
    engine's token provenance (`Span`) says which;
  * the top-k repository-context blocks per K/V head: in decode, ranked by the Quest bound of q.k over each block's
    key summaries (min/max per dimension, `SlabLayer.summaries`); in prefill, per query block, by MInference's
    estimate (the mean query of the block against each key block's mean key). GQA: one selection per K/V head
    serves its query heads.
Queries before `threshold` attend densely, so the K/V of those positions are exactly dense ones and stay shareable
in the prefix cache (`hash_blocks`' policy). The kernels live in `kernels/` (Triton on a GPU, torch on the CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from repocomplete.kernels.block_sparse_prefill import block_sparse_prefill, prefill_blocks
from repocomplete.kernels.topk_decode import box_scores, topk_decode_attention, topk_rows_attention
from repocomplete.model_runtime.attention import causal_attention, sparse_for
from repocomplete.model_runtime.kv_cache import SlabLayer
from repocomplete.model_runtime.quantize import DECODE_MAX_ROWS


# Up to this many new rows (speculative drafts) select blocks from the summaries, as decode does.
FEW_ROWS = DECODE_MAX_ROWS


@dataclass(frozen=True)
class SparsePolicy:
    threshold: int  # query positions from here on attend sparsely (0: all)
    block: int  # tokens per selection block (a multiple of the prefix cache's block)
    top_k: int  # repository-context blocks per K/V head (per query block in prefill)
    sinks: int  # tokens
    window: int  # tokens

    @classmethod
    def from_config(cls, config) -> "SparsePolicy | None":
        """The policy of a RuntimeConfig (None: dense attention)."""
        if config.attention == "dense":
            return None
        return cls(0 if config.attention == "sparse" else config.sparse_min_tokens, config.sparse_block_tokens,
                   config.sparse_top_k, config.sparse_sink_tokens, config.sparse_window_tokens)

    @property
    def key(self) -> tuple:
        return ("sparse", self.threshold, self.block, self.top_k, self.sinks, self.window)

    def cache_policy(self, block_size: int) -> tuple:
        """The prefix cache's policy (kv_cache.hash_blocks): blocks from the one holding `threshold` on are sparse."""
        return self.key, self.threshold // block_size


def attention_scale(model) -> float:
    """The softmax scale of a Llama-family model's attention: 1/sqrt(head dim)."""
    config = model.config.get_text_config()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return head_dim**-0.5


def context_blocks(spans: Sequence, length: int, block: int) -> torch.Tensor:
    """bool [blocks of `length`]: True where every token of the block is repository context (a top-k candidate);
    a block with any other token (current file, template, generated, unknown) is always attended."""
    n = -(-length // block)
    is_context = torch.zeros(n * block, dtype=torch.bool)
    for span in spans:
        if span.kind == "context" and span.start < length:
            is_context[span.start : min(span.end, length)] = True
    return is_context.view(n, block).all(dim=1)


class SparseAttention:
    """The attention of one engine's slab under a policy: call `set_spans` with the prompt's provenance, then
    `attend(layer, q, k, v, start)` per layer (it appends k, v to the slab)."""

    def __init__(self, policy: SparsePolicy, scale: float):
        self.policy = policy
        self.scale = scale
        self._context = torch.zeros(0, dtype=torch.bool)  # context_blocks of the prompt in the slab
        self._forced: tuple[int, torch.Tensor] | None = None  # (length, forced blocks) of the current step
        self._step: tuple | None = None  # (length, forced block indices, candidate count) of the current step

    def set_spans(self, spans: Sequence, length: int) -> None:
        self._context = context_blocks(spans, length, self.policy.block)
        self._forced = self._step = None

    def forced(self, length: int) -> torch.Tensor:
        """bool [blocks of `length`]: the blocks a decode query at position length-1 reads whatever its scores."""
        if self._forced is not None and self._forced[0] == length:
            return self._forced[1]
        p = self.policy
        n = -(-length // p.block)
        forced = torch.ones(n, dtype=torch.bool)
        known = min(n, self._context.numel())
        forced[:known] = ~self._context[:known]
        forced[: -(-p.sinks // p.block)] = True
        first_recent = max(0, length - max(p.window, 1)) // p.block  # the query's own block at least
        forced[first_recent:] = True
        self._forced = (length, forced)
        return forced

    def _decode_blocks(self, layer: SlabLayer, q: torch.Tensor, length: int) -> torch.Tensor:
        """The blocks the rows q [b, H, n, D] (the last n positions) read, per K/V head: [b, Hkv, S], the top-k
        repository-context blocks first, then the forced ones in order (so the blocks of the new rows come last, as
        the kernels' mask-free path wants). A block's score is its Quest bound (`box_scores`), the max over the rows
        and the heads of the group. A decode step runs this per layer, so the part shared by every layer (the forced
        blocks and the candidates) is computed once per step, and the rest is a handful of torch calls."""
        forced = self.forced(length)
        if self._step is None or self._step[0] != length:
            forced_idx = forced.nonzero().flatten()
            self._step = (length, forced_idx, int((~forced).sum()))
        _, forced_idx, candidates = self._step
        b = q.shape[0]
        hkv = layer.k_buf.shape[1]
        chosen = forced_idx.expand(b, hkv, -1)
        k = min(self.policy.top_k, candidates)
        if not k:
            return chosen
        scores = box_scores(q, layer.boxes(self.policy.block, forced.numel()))
        top = scores.masked_fill_(forced, float("-inf")).topk(k, dim=-1, sorted=False).indices
        return torch.cat((top, chosen), dim=-1)

    def attend(self, layer: SlabLayer, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int) -> torch.Tensor:
        """Append k, v [b, Hkv, n, D] at `start` and return the attention of q [b, H, n, D]: [b, n, H, D]."""
        keys, values = layer.update(k, v)
        return self.attention(layer, q, keys, values, start)

    def attention(self, layer: SlabLayer, q, keys, values, start: int) -> torch.Tensor:
        """q [b, H, n, D] at positions start..start+n-1 over keys/values [b, Hkv, start+n, D] (the slab's views,
        already holding the new rows). Returns [b, n, H, D]."""
        n = q.shape[2]
        p = self.policy
        end = start + n
        if end <= p.threshold or end <= p.window + p.sinks:  # nothing to leave out
            return causal_attention(q, keys, values, start, self.scale)
        if start < p.threshold:  # the rows before the threshold attend densely (their K/V stay exact)
            split = p.threshold - start
            head = causal_attention(q[:, :, :split], keys[:, :, : p.threshold], values[:, :, : p.threshold], start, self.scale)
            tail = self.attention(layer, q[:, :, split:], keys, values, p.threshold)
            return torch.cat((head, tail), dim=1)
        if n == 1:
            blocks = self._decode_blocks(layer, q, end)
            return topk_decode_attention(q[:, :, 0], keys, values, blocks, p.block, end, self.scale).unsqueeze(1)
        if n <= FEW_ROWS and not q.is_cuda:  # a draft being verified: blocks ranked by the summaries, as decode does
            blocks = self._decode_blocks(layer, q, end)
            return topk_rows_attention(q, keys, values, blocks, p.block, end, self.scale).transpose(1, 2)
        blocks = prefill_blocks(q, keys, start, p.block, -(-p.sinks // p.block), -(-p.window // p.block), p.top_k,
                                self.forced(end))
        return block_sparse_prefill(q, keys, values, blocks, start, p.block, self.scale).transpose(1, 2)


def sparse_forward(forward, sparse: SparseAttention):
    """The engine's forward (fast_llama.Forward) with attention under `sparse`: FastLlama runs its layers with
    `SparseAttention.attend`; transformers' forward reaches it through the registered attention function
    (attention.attention_forward), which finds it installed for the call (`attention.sparse_for`)."""
    from repocomplete.model_runtime.fast_llama import FastLlama

    if isinstance(forward, FastLlama):
        def fast(input_ids: torch.Tensor, cache, all_logits: bool = False) -> torch.Tensor:
            start = cache.length
            logits = forward.run(input_ids, start, lambda i, q, k, v: sparse.attend(cache.layers[i], q, k, v, start),
                                 all_logits)[0]
            return logits if all_logits else logits[-1]

        return fast

    def fallback(input_ids: torch.Tensor, cache, all_logits: bool = False) -> torch.Tensor:
        with sparse_for(sparse, cache):
            return forward(input_ids, cache, all_logits)

    return fallback
