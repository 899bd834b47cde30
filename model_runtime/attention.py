"""Attention for one query token over a long cache, registered with transformers as "repocomplete".

For decode (one query row) with grouped-query attention, the CPU SDPA kernels first expand K/V to every query
head and then parallelise over a handful of heads: at 4k cached tokens that costs ~3 ms per layer on this CPU.
Grouping the query heads by their K/V head instead turns decode attention into two small batched matmuls that
read the cache once. Prefill (many query rows) keeps transformers' SDPA path.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from repocomplete.model_runtime.quantize import DECODE_MAX_ROWS

NAME = "repocomplete"


def decode_attention(query, key, value, attention_mask, scaling: float) -> torch.Tensor:
    """query [B, H, 1, D]; key/value [B, Hkv, L, D]; mask None, bool [B, 1, 1, L] (True = attend) or additive.

    Returns [B, 1, H, D] (the layout transformers' attention functions return).
    """
    b, h, _, d = query.shape
    hkv = key.shape[1]
    q = query.reshape(b, hkv, h // hkv, d)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scaling  # [B, Hkv, G, L]
    if attention_mask is not None:
        mask = attention_mask[..., -1:, : key.shape[-2]].reshape(b, 1, 1, -1)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, Hkv, G, D]
    return out.reshape(b, h, 1, d).transpose(1, 2)


def few_rows_attention(query, key, value, start: int, scaling: float) -> torch.Tensor:
    """The causal attention of a few new rows (a speculative draft being verified) over a long cache, grouped
    like `decode_attention`: the cache is read once per K/V head, never cast or expanded to every query head.

    query [B, H, n, D] at positions start..start+n-1; key/value [B, Hkv, start+n, D]. Returns [B, n, H, D]."""
    b, h, n, d = query.shape
    hkv, total = key.shape[1], key.shape[2]
    q = query.reshape(b, hkv, (h // hkv) * n, d)  # rows ordered (group, position)
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scaling  # [B, Hkv, G*n, L]
    rows = torch.arange(n, device=query.device).repeat(h // hkv)  # each row's position among the new ones
    allowed = torch.arange(total, device=query.device)[None, :] <= (start + rows)[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # [B, Hkv, G*n, D]
    return out.reshape(b, h, n, d).transpose(1, 2)


def causal_attention(query, key, value, start: int, scale: float) -> torch.Tensor:
    """Dense causal attention of query [B, H, n, D] at positions start..start+n-1 over key/value [B, Hkv, start+n, D]
    (the cache, holding the new rows too): one row reads the cache grouped (`decode_attention`), a few rows after a
    cache likewise (`few_rows_attention`, up to DECODE_MAX_ROWS: a speculative draft), more rows go to SDPA in the
    query's dtype.
    Returns [B, n, H, D]."""
    n = query.shape[2]
    if n == 1:  # the cache may be float32 under bf16 activations (kv_store_dtype)
        return decode_attention(query.to(key.dtype), key, value, None, scale)
    if n <= DECODE_MAX_ROWS and start > 0:  # a draft being verified: read the cache as decode does
        return few_rows_attention(query.to(key.dtype), key, value, start, scale)
    groups = query.shape[1] // key.shape[1]
    key = key.to(query.dtype).repeat_interleave(groups, dim=1)
    value = value.to(query.dtype).repeat_interleave(groups, dim=1)
    if start == 0:
        out = nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale)
    else:  # new row j (absolute position start + j) sees every cached position and the new ones up to itself
        mask = torch.ones(n, key.shape[2], dtype=torch.bool, device=query.device).tril(diagonal=start)
        out = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


# Sparse attention (sparse.py) for transformers' forward: the engine installs its SparseAttention and slab for the
# call, since the registered function below gets no engine.
_sparse = threading.local()


@contextmanager
def sparse_for(sparse, slab):
    previous = getattr(_sparse, "value", None)
    _sparse.value = (sparse, slab)
    try:
        yield
    finally:
        _sparse.value = previous


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    installed = getattr(_sparse, "value", None)
    if installed is not None and not module.training:
        sparse, slab = installed
        start = key.shape[2] - query.shape[2]  # key/value: the slab's views, holding the new rows
        return sparse.attention(slab.layers[module.layer_idx], query, key, value, start).to(query.dtype), None
    # The cache may be stored in float32 under bf16 activations (see `kv_store_dtype`).
    if query.shape[2] == 1 and not module.training:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        return decode_attention(query.to(key.dtype), key, value, attention_mask, scale).to(query.dtype), None
    key, value = key.to(query.dtype), value.to(query.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def kv_store_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the decode KV buffers.

    On the CPU, a bf16 matmul copies a strided view of the cache before multiplying (320 us against 177 us for
    float32 at 2k tokens, per layer and step), so bf16 models keep their decode cache in float32 there.
    """
    return torch.float32 if device.type == "cpu" else dtype


AttentionInterface.register(NAME, attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
