"""Shared-prefix attention (Hydragen, Juravsky et al. 2024): B sequences that share a prompt prefix attend to it
with one matmul per K/V head over all their query rows, instead of B matmuls that each read the prefix again.

The attention splits over the keys: the shared prefix (positions 0..P-1, one copy) and each sequence's own suffix
(positions P.., causal among the suffix). Each part yields a softmax-normalised output and its log-sum-exp; the two
merge exactly (softmax over a union of keys is the LSE-weighted mix of the softmaxes over each part). On the CPU the
prefix part is the cost at long prompts: with B*G query rows per K/V head it is one [B*G*n, D] x [D, P] matmul that
streams the prefix from memory once, where B separate decodes stream it B times.

No Triton: on the CPU two batched matmuls are already the kernel; compute is in float32 whatever K/V's dtype.
"""

from __future__ import annotations

import torch


def _partial(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scores) @ values and the rows' log-sum-exp (scores already masked with -inf)."""
    lse = torch.logsumexp(scores, dim=-1, keepdim=True)
    return torch.matmul(torch.exp(scores - lse), values), lse


def shared_prefix_attention(q: torch.Tensor, prefix_k: torch.Tensor, prefix_v: torch.Tensor, suffix_k: torch.Tensor,
                            suffix_v: torch.Tensor, suffix_start: int, scale: float) -> torch.Tensor:
    """Attention of B sequences' new rows over a shared prefix and their own suffixes.

    q [B, H, n, D]: the new rows, at suffix positions suffix_start..suffix_start+n-1 (absolute P+suffix_start..);
    prefix_k/v [1, Hkv, P, D]: the shared prefix (P may be 0); suffix_k/v [B, Hkv, S, D] with S >= suffix_start+n:
    each sequence's own K/V, the new rows' included; rows past suffix_start+n are ignored (a preallocated buffer may
    be passed whole). Causal: new row j sees the prefix and suffix rows 0..suffix_start+j. Returns [B, n, H, D] in
    float32.
    """
    b, h, n, d = q.shape
    hkv = suffix_k.shape[1]
    assert h % hkv == 0, f"{h} query heads over {hkv} K/V heads"
    assert prefix_k.shape[0] == 1 and prefix_k.shape[1] == hkv and prefix_k.shape[-1] == d, prefix_k.shape
    assert suffix_k.shape[0] == b and suffix_k.shape[2] >= suffix_start + n, (suffix_k.shape, suffix_start, n)
    g = h // hkv
    qf = q.float()
    length = suffix_start + n
    # Suffix part, per sequence: rows ordered (group, position) within each K/V head.
    qs = qf.reshape(b, hkv, g * n, d)
    scores = torch.matmul(qs, suffix_k[:, :, :length].float().transpose(-1, -2)) * scale  # [B, Hkv, G*n, L]
    rows = torch.arange(n, device=q.device).repeat(g)
    allowed = torch.arange(length, device=q.device)[None, :] <= (suffix_start + rows)[:, None]
    out_s, lse_s = _partial(scores.masked_fill(~allowed, float("-inf")), suffix_v[:, :, :length].float())
    if prefix_k.shape[2] == 0:
        return out_s.reshape(b, h, n, d).transpose(1, 2)
    # Prefix part: every sequence's rows of one K/V head in one matmul, so the prefix is read once for the batch.
    qp = qs.transpose(0, 1).reshape(hkv, b * g * n, d)
    scores = torch.matmul(qp, prefix_k[0].float().transpose(-1, -2)) * scale  # [Hkv, B*G*n, P]
    out_p, lse_p = _partial(scores, prefix_v[0].float())
    out_p = out_p.reshape(hkv, b, g * n, d).transpose(0, 1)
    lse_p = lse_p.reshape(hkv, b, g * n, 1).transpose(0, 1)
    # Merge: each part weighted by its share of the total mass.
    lse = torch.logaddexp(lse_p, lse_s)
    out = out_p * torch.exp(lse_p - lse) + out_s * torch.exp(lse_s - lse)
    return out.reshape(b, h, n, d).transpose(1, 2)


def reference_attention(q, prefix_k, prefix_v, suffix_k, suffix_v, suffix_start: int, scale: float) -> torch.Tensor:
    """The same by concatenation: each sequence's prefix + suffix, plain causal attention in float32."""
    b, h, n, _ = q.shape
    g = h // suffix_k.shape[1]
    p = prefix_k.shape[2]
    length = suffix_start + n
    keys = torch.cat([prefix_k.float().expand(b, -1, -1, -1), suffix_k[:, :, :length].float()], dim=2)
    values = torch.cat([prefix_v.float().expand(b, -1, -1, -1), suffix_v[:, :, :length].float()], dim=2)
    keys, values = keys.repeat_interleave(g, dim=1), values.repeat_interleave(g, dim=1)
    mask = torch.ones(n, p + length, dtype=torch.bool).tril(diagonal=p + suffix_start)
    out = torch.nn.functional.scaled_dot_product_attention(q.float(), keys, values, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)
