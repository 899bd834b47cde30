"""Quest-style top-k decode attention: one query row per head attends only to a few selected blocks of the cache.

Block j of the cache covers the absolute positions [j * block_size, (j + 1) * block_size). Each block is summarised
by the element-wise min and max of its keys (`block_summaries`); a query scores a block by Quest's upper bound on
q . k over the block (`block_scores`); `choose_blocks` keeps the forced blocks (sinks, the recent window) plus the
`top_k` best others; `topk_decode_attention` attends to exactly the positions < length inside the chosen blocks.

Selection is per K/V head: the G = H // Hkv query heads that share a K/V head share its blocks, so every chosen
block is read once and serves the whole group (as `model_runtime.attention.decode_attention` reads the cache once).

Layout (STYLE.md, kernels/): the `@triton.jit` kernels; their launcher; the public functions; plain torch
references. Triton is optional: without it (or on CPU tensors) the public function runs a grouped torch path.
"""

from __future__ import annotations

import functools

import torch

try:  # Triton is optional: CPU machines without it import this module fine and use the torch path.
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    HAVE_TRITON = False

LOG2E = 1.4426950408889634

# -- the Triton kernels ------------------------------------------------------------------------------------------

if HAVE_TRITON:

    @triton.jit
    def _topk_decode_split_kernel(
        Q, K, V, Blocks, Acc, M, L,
        stride_qb, stride_qh,
        stride_kb, stride_kh, stride_kl,
        stride_vb, stride_vh, stride_vl,
        stride_bb, stride_bh,
        length, n_sel, per_split, qk_scale,
        HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
        G_PAD: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program per (batch * kv head, split): all G query heads of that K/V head, online softmax over the
        split's share of the selected blocks. Writes the unnormalised accumulator and the running max / sum (in
        the log2 domain) for `_topk_decode_reduce_kernel`."""
        pid_bh = tl.program_id(0)
        split = tl.program_id(1)
        b = pid_bh // HKV
        hkv = pid_bh % HKV
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D_PAD)
        n = tl.arange(0, BLOCK_N)
        q_mask = (g[:, None] < G) & (d[None, :] < D)
        q_ptrs = Q + b * stride_qb + (hkv * G + g[:, None]) * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=q_mask, other=0.0).to(tl.float32)
        m_i = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
        k_base = K + b * stride_kb + hkv * stride_kh
        v_base = V + b * stride_vb + hkv * stride_vh
        s_lo = split * per_split
        s_hi = tl.minimum(s_lo + per_split, n_sel)
        for s in range(s_lo, s_hi):
            blk = tl.load(Blocks + b * stride_bb + hkv * stride_bh + s)
            if blk >= 0:
                pos = blk * BLOCK_N + n
                valid = pos < length
                kv_mask = valid[:, None] & (d[None, :] < D)
                k = tl.load(k_base + pos[:, None] * stride_kl + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
                v = tl.load(v_base + pos[:, None] * stride_vl + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
                qk = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # [G_PAD, BLOCK_N], log2 domain
                qk = tl.where(valid[None, :], qk, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block past `length`: nothing valid yet
                p = tl.exp2(qk - m_safe[:, None])
                alpha = tl.exp2(m_i - m_safe)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
                m_i = m_new
        row = pid_bh * SPLITS + split
        tl.store(M + row * G_PAD + g, m_i)
        tl.store(L + row * G_PAD + g, l_i)
        tl.store(Acc + (row * G_PAD + g[:, None]) * D_PAD + d[None, :], acc)

    @triton.jit
    def _topk_decode_reduce_kernel(
        Acc, M, L, Out, stride_ob, stride_oh,
        HKV: tl.constexpr, G: tl.constexpr, D: tl.constexpr, SPLITS: tl.constexpr,
        G_PAD: tl.constexpr, D_PAD: tl.constexpr,
    ):
        """Flash-decoding's reduce: one program per (batch * kv head) combines its splits' partial softmaxes."""
        pid_bh = tl.program_id(0)
        b = pid_bh // HKV
        hkv = pid_bh % HKV
        g = tl.arange(0, G_PAD)
        d = tl.arange(0, D_PAD)
        m_tot = tl.full([G_PAD], float("-inf"), dtype=tl.float32)
        for s in range(SPLITS):
            m_tot = tl.maximum(m_tot, tl.load(M + (pid_bh * SPLITS + s) * G_PAD + g))
        m_safe = tl.where(m_tot == float("-inf"), 0.0, m_tot)
        l_tot = tl.zeros([G_PAD], dtype=tl.float32)
        acc = tl.zeros([G_PAD, D_PAD], dtype=tl.float32)
        for s in range(SPLITS):
            row = pid_bh * SPLITS + s
            w = tl.exp2(tl.load(M + row * G_PAD + g) - m_safe)
            l_tot += w * tl.load(L + row * G_PAD + g)
            acc += w[:, None] * tl.load(Acc + (row * G_PAD + g[:, None]) * D_PAD + d[None, :])
        out = acc / tl.where(l_tot == 0.0, 1.0, l_tot)[:, None]  # nothing selected: zeros, not NaN
        o_ptrs = Out + b * stride_ob + (hkv * G + g[:, None]) * stride_oh + d[None, :]
        tl.store(o_ptrs, out, mask=(g[:, None] < G) & (d[None, :] < D))


# -- the launcher -------------------------------------------------------------------------------------------------


def _pow2(x: int, at_least: int = 16) -> int:
    return max(at_least, 1 << max(0, (int(x) - 1).bit_length()))


def _topk_decode_triton(q, k, v, blocks, block_size: int, length: int, scale: float, num_splits: int | None = None):
    """Assert shapes, dtypes and strides, pick the split count and launch the split and reduce kernels."""
    assert HAVE_TRITON, "triton is not installed"
    assert q.dim() == 3 and k.dim() == 4 and v.shape == k.shape and blocks.dim() == 3, "q [B,H,D], k/v [B,Hkv,L,D]"
    b, h, d = q.shape
    hkv = k.shape[1]
    assert k.shape[0] == b and k.shape[3] == d and h % hkv == 0, (q.shape, k.shape)
    assert blocks.shape[:2] == (b, hkv) and blocks.dtype in (torch.int64, torch.int32), (blocks.shape, blocks.dtype)
    assert q.is_floating_point() and k.dtype in (torch.float32, torch.bfloat16, torch.float16) and v.dtype == k.dtype
    assert block_size >= 16 and block_size & (block_size - 1) == 0, "block_size: a power of two >= 16 (tl.dot)"
    assert q.device == k.device == v.device == blocks.device
    assert q.stride(-1) == 1 and k.stride(-1) == 1 and v.stride(-1) == 1, "the head dimension must be contiguous"
    blocks = blocks.contiguous()
    groups = h // hkv
    n_sel = blocks.shape[2]
    g_pad, d_pad = _pow2(groups), _pow2(d)
    if num_splits is None:  # flash-decoding: enough programs to fill a GPU, a few blocks each at least
        num_splits = max(1, min(32, triton.cdiv(n_sel, 4)))
    num_splits = max(1, min(num_splits, max(1, n_sel)))
    per_split = triton.cdiv(max(n_sel, 1), num_splits)
    rows = b * hkv * num_splits
    acc = torch.empty(rows, g_pad, d_pad, dtype=torch.float32, device=q.device)
    m = torch.empty(rows, g_pad, dtype=torch.float32, device=q.device)
    lsum = torch.empty(rows, g_pad, dtype=torch.float32, device=q.device)
    out = torch.empty(b, h, d, dtype=torch.float32, device=q.device)
    _topk_decode_split_kernel[(b * hkv, num_splits)](
        q, k, v, blocks, acc, m, lsum,
        q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        blocks.stride(0), blocks.stride(1),
        int(length), n_sel, per_split, float(scale) * LOG2E,
        HKV=hkv, G=groups, D=d, SPLITS=num_splits, G_PAD=g_pad, D_PAD=d_pad, BLOCK_N=block_size,
    )
    _topk_decode_reduce_kernel[(b * hkv,)](
        acc, m, lsum, out, out.stride(0), out.stride(1),
        HKV=hkv, G=groups, D=d, SPLITS=num_splits, G_PAD=g_pad, D_PAD=d_pad,
    )
    return out.to(q.dtype)


# -- the public functions -----------------------------------------------------------------------------------------


def block_summaries(k: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B, Hkv, L, D] -> (kmin, kmax), each [B, Hkv, ceil(L / block_size), D], in k's dtype.

    A ragged last block is summarised over its L % block_size valid rows only."""
    b, hkv, length, d = k.shape
    full = length // block_size
    kmin, kmax = [], []
    if full:
        blocks = k[:, :, : full * block_size].unflatten(2, (full, block_size))
        kmin.append(blocks.amin(dim=3))
        kmax.append(blocks.amax(dim=3))
    if length % block_size:
        tail = k[:, :, full * block_size :]
        kmin.append(tail.amin(dim=2, keepdim=True))
        kmax.append(tail.amax(dim=2, keepdim=True))
    if not kmin:
        empty = k.new_empty(b, hkv, 0, d)
        return empty, empty.clone()
    return torch.cat(kmin, dim=2), torch.cat(kmax, dim=2)


def block_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor, scale: float) -> torch.Tensor:
    """Quest's upper bound of q . k / scale over each block, per K/V head: float32 [B, Hkv, NB].

    For one head, max_{k in block} q . k <= sum_d max(q_d kmin_d, q_d kmax_d) = q+ . kmax + q- . kmin (q+ / q- the
    positive / negative parts of q), so the bound is two matmuls. The G query heads of a K/V head share its
    selection, and the group's score is the MAX of their bounds: a block is worth reading if any head of the group
    may attend to it strongly; a sum or mean would let several indifferent heads outvote the one head that needs
    the block, and the max is still an upper bound for every head of the group."""
    b, h, d = q.shape
    hkv = kmin.shape[1]
    qg = q.float().reshape(b, hkv, h // hkv, d)
    bound = torch.matmul(qg.clamp(min=0), kmax.float().transpose(-1, -2))
    bound += torch.matmul(qg.clamp(max=0), kmin.float().transpose(-1, -2))  # [B, Hkv, G, NB]
    return bound.amax(dim=2) * scale


def box_scores(q: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """`block_scores` (without the scale, which does not change a ranking) from a [centre | radius] table
    box [B, Hkv, NB, 2D]: max_{k in block} q.k <= q.centre + |q|.radius, the same bound as sum_d max(q_d kmin_d,
    q_d kmax_d), in one matmul. q [B, H, D] or [B, H, n, D] (n rows: the max over them as over the group).
    Returns float32 [B, Hkv, NB]."""
    if q.dim() == 3:
        q = q[:, :, None]
    b, h, n, d = q.shape
    hkv = box.shape[1]
    qg = q.float().reshape(b, hkv, (h // hkv) * n, d)
    return torch.matmul(torch.cat((qg, qg.abs()), dim=-1), box.transpose(-1, -2)).amax(dim=2)


def _sorted_padded(selected: torch.Tensor) -> torch.Tensor:
    """bool [..., NB] -> the selected indices sorted ascending, padded with -1 to the largest count: [..., S]."""
    nb = selected.shape[-1]
    width = int(selected.sum(dim=-1).max()) if selected.numel() else 0
    index = torch.arange(nb, device=selected.device).expand_as(selected)
    keyed = torch.where(selected, index, torch.full_like(index, nb))
    chosen = keyed.sort(dim=-1).values[..., :width]
    return chosen.masked_fill(chosen == nb, -1)


def choose_blocks(scores: torch.Tensor, forced: torch.Tensor, top_k: int, eligible: torch.Tensor | None = None):
    """Every forced block plus the `top_k` highest-scoring unforced ones, per row: LongTensor [B, Hkv, S].

    scores [..., NB]; forced bool [NB] or [..., NB]; eligible (optional, bool, broadcastable): the blocks that may be
    chosen at all (prefill: the causally visible ones); a forced block that is not eligible is dropped. Indices are
    sorted ascending and padded with -1 to S = the largest (forced count + min(top_k, unforced count)). Equal
    scores keep the lower block index first."""
    forced = torch.broadcast_to(forced.to(torch.bool), scores.shape)
    if eligible is not None:
        eligible = torch.broadcast_to(eligible.to(torch.bool), scores.shape)
        forced = forced & eligible
        candidate = eligible & ~forced
    else:
        candidate = ~forced
    nb = scores.shape[-1]
    kmax = min(int(top_k), nb)
    selected = forced.clone()
    if kmax > 0:
        # Candidates first, by descending score (stable: ties keep the lower index), then everything else.
        order = torch.sort(-scores.float(), dim=-1, stable=True).indices
        order = order.gather(-1, torch.sort((~candidate).gather(-1, order).to(torch.int8), dim=-1, stable=True).indices)
        take = torch.arange(kmax, device=scores.device) < candidate.sum(dim=-1, keepdim=True).clamp(max=kmax)
        top = order[..., :kmax]
        selected.scatter_(-1, top, take | selected.gather(-1, top))
    return _sorted_padded(selected)


def topk_decode_attention(q, k, v, blocks, block_size: int, length: int, scale: float, backend: str = "auto",
                          num_splits: int | None = None) -> torch.Tensor:
    """The attention of one query row per head to exactly the positions < length inside the listed blocks.

    q [B, H, D] (any float dtype); k/v [B, Hkv, Lbuf, D] float32 or bfloat16 (Lbuf >= length); blocks [B, Hkv, S]
    block indices, -1 = padding. Computed in float32, returned in q's dtype, [B, H, D]. A head whose selection
    holds no valid position gets zeros. backend: "triton" (the kernel; on CPU tensors only under TRITON_INTERPRET=1),
    "torch" (the grouped torch path), or "auto" (Triton on CUDA tensors when it imports, else torch). num_splits:
    the Triton kernel's split-K count (None: chosen from the selection's size)."""
    if _use_triton(backend, q):
        return _topk_decode_triton(q, k, v, blocks, block_size, length, scale, num_splits)
    return _topk_decode_torch(q, k, v, blocks, block_size, length, scale)


def _use_triton(backend: str, x: torch.Tensor) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', not {backend!r}")
    if backend == "triton":
        if not HAVE_TRITON:
            raise RuntimeError("backend='triton' but triton is not installed")
        return True
    return backend == "auto" and HAVE_TRITON and x.is_cuda


def _row_table(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """x [B, Hkv, L, D] as a 2-D table of its rows for `index_select`, with the row strides of b, h and l.

    A view when the rows are evenly laid out (a contiguous tensor, or a slice [:, :, :L] of a bigger contiguous
    cache buffer); otherwise a contiguous copy."""
    d = x.shape[-1]
    st = x.stride()
    if not (st[3] == 1 and st[2] == d and st[1] % d == 0 and st[0] % d == 0):
        x = x.contiguous()
        st = x.stride()
    rows = (st[0] * (x.shape[0] - 1) + st[1] * (x.shape[1] - 1) + st[2] * (x.shape[2] - 1)) // d + 1
    table = torch.as_strided(x, (rows, d), (d, 1), x.storage_offset())
    return table, st[0] // d, st[1] // d, st[2] // d


def _gather_rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x [B, Hkv, L, D], pos [B, Hkv, ..., N] (valid row indices) -> [B, Hkv, ..., N, D], contiguous: one
    index_select (3x faster than advanced indexing on this CPU), reading only the selected rows."""
    b, hkv = x.shape[:2]
    table, sb, sh, sl = _row_table(x)
    view = (b, hkv) + (1,) * (pos.dim() - 2)
    base = (torch.arange(b, device=x.device) * sb)[:, None] + (torch.arange(hkv, device=x.device) * sh)[None, :]
    flat = (base.view(view) + pos * sl).flatten()
    return table.index_select(0, flat).view(*pos.shape, x.shape[-1])


@functools.lru_cache(maxsize=64)
def _arange(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, device=device)


def _topk_decode_torch(q, k, v, blocks, block_size: int, length: int, scale: float) -> torch.Tensor:
    """Gather the selected rows of each K/V head into contiguous [B, Hkv, S * bs, D] tensors (no copy of the whole
    cache), then two grouped matmuls as `decode_attention`: each gathered row is read once for the G query heads of
    its K/V head. The products run in the cache's dtype (a bf16 matmul over contiguous rows is the fast one on an
    AVX-512 CPU with bf16: 181 against 392 us for fp32 at 8k rows), the softmax in float32."""
    return topk_rows_attention(q[:, :, None], k, v, blocks, block_size, length, scale)[:, :, 0]


def topk_rows_attention(q, k, v, blocks, block_size: int, length: int, scale: float) -> torch.Tensor:
    """`topk_decode_attention` for a few new rows q [B, H, n, D] at positions length-n .. length-1 (a speculative
    draft being verified), each causal: row r reads the listed positions up to its own. Torch only (the CPU path;
    on a GPU, `block_sparse_prefill` with one query block does this). Returns [B, H, n, D].

    The common selection needs no mask beyond the causal triangle of the new rows: no padding, and every head lists
    the blocks holding the new rows (sorted, so they come last: the gathered rows end with positions length-n ..
    length-1, and the rows past `length` are cut). A decode step runs this once per layer, so it is kept to few
    torch calls (one row index serves K and V)."""
    b, h, n, d = q.shape
    hkv, lbuf = k.shape[1], k.shape[2]
    groups = h // hkv
    if blocks.shape[-1] == 0:
        return q.new_zeros(b, h, n, d)
    last, first_new = (length - 1) // block_size, (length - n) // block_size
    m = last - first_new + 1
    needs_mask = (bool((blocks < 0).any()) or blocks.shape[-1] < m
                  or not bool((blocks[..., -m:] == _arange(m, blocks.device) + first_new).all()))
    if needs_mask or k.stride() != v.stride():
        offsets = _arange(block_size, k.device)
        pos = (blocks.clamp(min=0)[..., None] * block_size + offsets).flatten(2)  # [B, Hkv, S * bs]
        valid = (blocks >= 0).repeat_interleave(block_size, dim=-1) & (pos < length)
        keys, values = _gather_rows(k, pos.clamp(max=lbuf - 1)), _gather_rows(v, pos.clamp(max=lbuf - 1))
    else:
        ktable, sb, sh, sl = _row_table(k)
        vtable = _row_table(v)[0]
        first = blocks * (block_size * sl)
        first += (_arange(b, k.device) * sb)[:, None, None] + (_arange(hkv, k.device) * sh)[None, :, None]
        flat = (first[..., None] + _arange(block_size, k.device) * sl).flatten(2)
        flat = flat[..., : flat.shape[-1] - ((last + 1) * block_size - length)].flatten()
        rows = flat.numel() // (b * hkv)
        keys = ktable.index_select(0, flat).view(b, hkv, rows, d)
        values = vtable.index_select(0, flat).view(b, hkv, rows, d)
    dtype = keys.dtype if keys.dtype in (torch.float32, torch.bfloat16) else torch.float32
    qg = q.reshape(b, hkv, groups * n, d).to(dtype)  # rows ordered (group, position)
    scores = torch.matmul(qg, keys.to(dtype).transpose(-1, -2)).float().mul_(scale)  # [B, Hkv, G*n, rows]
    if needs_mask:
        qpos = (length - n + _arange(n, q.device)).repeat(groups)  # [G*n]
        allowed = valid[:, :, None, :] & (pos[:, :, None, :] <= qpos[:, None])
        scores.masked_fill_(~allowed, float("-inf"))
    elif n > 1:  # the new rows are the last n gathered: row r must not see the new rows after it
        tail = scores.view(b, hkv, groups, n, -1)[..., -n:]
        tail.masked_fill_(_future(n, q.device), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if needs_mask:
        probs.nan_to_num_(0.0)  # a head with nothing valid: zeros
    out = torch.matmul(probs.to(dtype), values.to(dtype))  # [B, Hkv, G*n, D]
    return out.reshape(b, h, n, d).to(q.dtype)


@functools.lru_cache(maxsize=32)
def _future(n: int, device: torch.device) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


# -- plain torch references ---------------------------------------------------------------------------------------


def dense_decode_reference(q, k, v, length: int, scale: float) -> torch.Tensor:
    """Plain attention of q [B, H, D] to positions < length of k/v [B, Hkv, Lbuf, D], in float32, q's dtype out."""
    groups = q.shape[1] // k.shape[1]
    keys = k[:, :, :length].float().repeat_interleave(groups, dim=1)
    values = v[:, :, :length].float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("bhd,bhld->bhl", q.float(), keys) * scale
    return torch.einsum("bhl,bhld->bhd", torch.softmax(scores, dim=-1), values).to(q.dtype)


def topk_decode_reference(q, k, v, blocks, block_size: int, length: int, scale: float) -> torch.Tensor:
    """Plain masked attention: an explicit mask of the positions < length inside the listed blocks."""
    b, h = q.shape[:2]
    hkv, lbuf = k.shape[1], k.shape[2]
    groups = h // hkv
    mask = torch.zeros(b, hkv, lbuf, dtype=torch.bool)
    for bb in range(b):
        for hh in range(hkv):
            for blk in blocks[bb, hh].tolist():
                if blk >= 0:
                    mask[bb, hh, blk * block_size : min((blk + 1) * block_size, length)] = True
    mask = mask.to(q.device).repeat_interleave(groups, dim=1)
    keys = k.float().repeat_interleave(groups, dim=1)
    values = v.float().repeat_interleave(groups, dim=1)
    scores = torch.einsum("bhd,bhld->bhl", q.float(), keys) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhl,bhld->bhd", probs, values).to(q.dtype)


__all__ = [
    "HAVE_TRITON",
    "block_scores",
    "block_summaries",
    "choose_blocks",
    "dense_decode_reference",
    "topk_decode_attention",
    "topk_decode_reference",
]
