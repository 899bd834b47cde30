"""The sparse attention kernels (repocomplete.kernels) against dense SDPA, for prefill and decode at long lengths.

`kernel_figures` returns one row per (phase, length): dense_ms (torch's scaled_dot_product_attention with the K/V
heads expanded to every query head, causal for prefill, as the runtime's prefill does), sparse_ms (ours, the block
selection included: sinks + a recent window + top-k blocks, about 1/8 of the blocks by default), speedup =
dense_ms / sparse_ms, the backend ("triton" on CUDA with triton installed, else "torch") and the device. Decode rows
also carry grouped_ms, the grouped dense decode of `model_runtime.attention.decode_attention` (the runtime's CPU
decode), which is the fairer dense baseline on the CPU. Prefill lengths whose dense SDPA would take longer than
`max_dense_s` (extrapolated quadratically from a short probe) are reported as skipped, with the reason.

The figures are of the machine they ran on (a shared machine's speed drifts): quote them with its CPU/GPU.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from repocomplete.kernels.block_sparse_prefill import block_sparse_prefill, prefill_blocks
from repocomplete.kernels.topk_decode import (
    HAVE_TRITON,
    block_scores,
    block_summaries,
    choose_blocks,
    topk_decode_attention,
)

PROBE_TOKENS = 2048


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn, device: torch.device, repeats: int) -> float:
    """The best of a few runs, in ms. A call slower than a second is timed once (its first run is the figure)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    best = time.perf_counter() - start
    if best < 1.0:
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            fn()
            _sync(device)
            best = min(best, time.perf_counter() - start)
    return best * 1e3


def _dense_prefill(q, k, v, scale):
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                          is_causal=True, scale=scale)


def _dense_decode_sdpa(q, k, v, scale):
    groups = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q[:, :, None], k.repeat_interleave(groups, 1),
                                          v.repeat_interleave(groups, 1), scale=scale)


def _dense_decode_grouped(q, k, v, scale):
    """`model_runtime.attention.decode_attention` without its mask handling (not imported: it pulls transformers)."""
    b, h, d = q.shape
    qg = q.reshape(b, k.shape[1], h // k.shape[1], d)
    probs = torch.softmax(torch.matmul(qg, k.transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(probs, v).reshape(b, h, d)


def _prefill_row(row, q, k, v, scale, block_size, sinks, window, k_top, backend, repeats) -> None:
    """Every token new (start 0), causal: dense SDPA against block selection + block-sparse attention."""
    device, nb, hkv = q.device, -(-q.shape[2] // block_size), k.shape[1]

    def sparse():
        blocks = prefill_blocks(q, k, 0, block_size, sinks, window, k_top)
        return block_sparse_prefill(q, k, v, blocks, 0, block_size, scale, backend=backend), blocks

    row["dense_ms"] = _time_ms(lambda: _dense_prefill(q, k, v, scale), device, repeats)
    row["sparse_ms"] = _time_ms(sparse, device, repeats)
    row["selected"] = float((sparse()[1] >= 0).sum()) / (hkv * nb * (nb + 1) / 2)
    row["speedup"] = row["dense_ms"] / row["sparse_ms"]


def _decode_row(row, q, k, v, scale, block_size, sinks, window, k_top, backend, repeats) -> None:
    """One new row over every cached position. The block summaries are kept up to date as the cache grows (one
    block at a time), so per step only the scoring, the choice and the attention count."""
    device, tokens, hkv = q.device, k.shape[2], k.shape[1]
    nb = -(-tokens // block_size)
    kmin, kmax = block_summaries(k, block_size)
    forced = torch.zeros(nb, dtype=torch.bool, device=device)
    forced[:sinks] = True
    forced[max(0, nb - window) :] = True

    def sparse():
        blocks = choose_blocks(block_scores(q, kmin, kmax, scale), forced, k_top)
        return topk_decode_attention(q, k, v, blocks, block_size, tokens, scale, backend=backend), blocks

    repeats = max(repeats, 10)
    row["dense_ms"] = _time_ms(lambda: _dense_decode_sdpa(q, k, v, scale), device, repeats)
    row["grouped_ms"] = _time_ms(lambda: _dense_decode_grouped(q, k, v, scale), device, repeats)
    row["sparse_ms"] = _time_ms(sparse, device, repeats)
    row["selected"] = float((sparse()[1] >= 0).sum()) / (hkv * nb)
    row["speedup"] = row["dense_ms"] / row["sparse_ms"]


def kernel_figures(lengths=(8192, 32768, 65536), head_dim: int = 64, kv_heads: int = 3, q_heads: int = 9,
                   device=None, top_k: int | None = None, block_size: int = 64, repeats: int = 3, sinks: int = 1,
                   window: int = 4, max_dense_s: float = 30.0, seed: int = 0) -> list[dict]:
    """Rows {phase, tokens, dense_ms, sparse_ms, speedup, backend, device, selected, skipped} for prefill and decode
    at each length (decode rows add grouped_ms). top_k None: about 1/8 of the blocks in all (sinks + window +
    top_k). `selected` is the fraction of the causally visible blocks that the sparse run reads. A skipped row has
    None timings and its reason."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    backend = "triton" if device.type == "cuda" and HAVE_TRITON else "torch"
    scale = head_dim**-0.5
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    def base(phase, tokens):
        return {"phase": phase, "tokens": tokens, "dense_ms": None, "sparse_ms": None, "speedup": None,
                "backend": backend, "device": str(device), "selected": None, "skipped": None}

    probe = min(PROBE_TOKENS, max(lengths))
    probe_qkv = randn(1, q_heads, probe, head_dim), randn(1, kv_heads, probe, head_dim), randn(1, kv_heads, probe,
                                                                                              head_dim)
    probe_ms = _time_ms(lambda: _dense_prefill(*probe_qkv, scale), device, 1)

    rows = []
    for tokens in lengths:
        nb = -(-tokens // block_size)
        k_top = top_k if top_k is not None else max(0, nb // 8 - sinks - window)
        q = randn(1, q_heads, tokens, head_dim)
        k = randn(1, kv_heads, tokens, head_dim)
        v = randn(1, kv_heads, tokens, head_dim)
        selection = (block_size, sinks, window, k_top, backend, repeats)
        row = base("prefill", tokens)
        estimate_s = probe_ms * (tokens / probe) ** 2 / 1e3
        if estimate_s > max_dense_s:
            row["skipped"] = f"dense SDPA prefill estimated at {estimate_s:.0f} s > {max_dense_s:g} s on {device}"
        else:
            _prefill_row(row, q, k, v, scale, *selection)
        rows.append(row)
        row = base("decode", tokens)
        _decode_row(row, q[:, :, -1].contiguous(), k, v, scale, *selection)
        rows.append(row)
    return rows
