"""kernels/block_sparse_prefill.py: the block choice and the block-sparse causal prefill (the Triton kernel under
TRITON_INTERPRET=1 on CPU tensors, and the torch CPU path) against a reference with a dense boolean mask."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels module defines its @triton.jit functions

import pytest
import torch
from helpers import needs_interpreted_triton
import torch.nn.functional as F
from repocomplete.kernels import block_sparse_prefill as bsp
from repocomplete.kernels.block_sparse_prefill import (
    block_sparse_prefill,
    block_sparse_prefill_reference,
    prefill_blocks,
)


needs_triton = needs_interpreted_triton(getattr(bsp, "_block_sparse_prefill_kernel", None))

# (batch, query heads, kv heads, head dim, start, new rows, block size): GQA 1, 3, 4; ragged ends; partial prefixes,
# some not a multiple of the block size.
SHAPES = [
    (1, 2, 2, 16, 0, 45, 16),
    (1, 6, 2, 16, 37, 90, 16),
    (2, 3, 1, 64, 64, 70, 32),
    (1, 8, 2, 16, 5, 100, 16),
    (1, 4, 4, 64, 0, 96, 32),
]


def _case(shape, kv_dtype, seed=0):
    b, h, hkv, d, start, n, bs = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g)
    k = torch.randn(b, hkv, start + n, d, generator=g).to(kv_dtype)
    v = torch.randn(b, hkv, start + n, d, generator=g).to(kv_dtype)
    blocks = prefill_blocks(q, k, start, bs, sinks=1, window=2, top_k=1)
    return q, k, v, blocks, start, bs, d**-0.5


def _dense_causal(q, k, v, start, scale):
    groups = q.shape[1] // k.shape[1]
    n, total = q.shape[2], k.shape[2]
    mask = torch.ones(n, total, dtype=torch.bool).tril(diagonal=start)
    keys, values = k.float().repeat_interleave(groups, 1), v.float().repeat_interleave(groups, 1)
    return F.scaled_dot_product_attention(q.float(), keys, values, attn_mask=mask, scale=scale).to(q.dtype)


# -- the block choice ---------------------------------------------------------------------------------------------


def test_prefill_blocks_exact_indices():
    # start 20, n 60, bs 16: query blocks cover positions 20-35, 36-51, 52-67, 68-79; key blocks 0..4 (80 rows).
    # q and k are built so that the block-mean estimate is exactly q_mean . k_mean with a known order.
    b, h, hkv, d, start, n, bs = 1, 2, 1, 4, 20, 60, 16
    q = torch.zeros(b, h, n, d)
    q[..., 0] = 1.0
    k = torch.zeros(b, hkv, start + n, d)
    means = [3.0, 1.0, 5.0, 2.0, 4.0]
    for j, m in enumerate(means):
        k[:, :, j * bs : (j + 1) * bs, 0] = m
    got = prefill_blocks(q, k, start, bs, sinks=1, window=1, top_k=1)
    # qb0 (20-35): own blocks 1, 2 (diag 2); sink 0; nothing else visible      -> 0 1 2
    # qb1 (36-51): own/diag 2, 3; sink 0; top-1 of {1} -> 1                     -> 0 1 2 3
    # qb2 (52-67): own 3, diag 4 (window 1 widened to the own block); top-1 of {1, 2} -> 2 -> 0 2 3 4
    # qb3 (68-79): own/diag 4; sink 0; top-1 of {1, 2, 3} -> 2                  -> 0 2 4
    expected = torch.tensor([[[[0, 1, 2, -1], [0, 1, 2, 3], [0, 2, 3, 4], [0, 2, 4, -1]]]])
    assert torch.equal(got, expected)
    # forced block 1 everywhere it is visible; top_k 0
    forced = torch.tensor([False, True, False, False, False])
    got = prefill_blocks(q, k, start, bs, sinks=1, window=1, top_k=0, forced=forced)
    expected = torch.tensor([[[[0, 1, 2, -1], [0, 1, 2, 3], [0, 1, 3, 4], [0, 1, 4, -1]]]])
    assert torch.equal(got, expected)
    # a wider window, no sinks, top-k 1: qb3 takes blocks 3, 4 and the best other, 2
    got = prefill_blocks(q, k, start, bs, sinks=0, window=2, top_k=1)
    assert torch.equal(got[0, 0, 3], torch.tensor([2, 3, 4]))


def test_prefill_blocks_group_max_and_causality():
    # two query heads of one K/V head disagree: the group's max picks each one's favourite block
    b, h, d, bs = 1, 2, 2, 16
    q = torch.zeros(b, h, 16, d)
    q[0, 0, :, 0] = 1.0  # head 0 likes dimension 0
    q[0, 1, :, 1] = 1.0  # head 1 likes dimension 1
    k = torch.zeros(b, 1, 6 * 16 + 16, d)
    k[0, 0, 1 * 16 : 2 * 16, 0] = 5.0  # block 1: head 0's favourite
    k[0, 0, 3 * 16 : 4 * 16, 1] = 4.0  # block 3: head 1's favourite
    k[0, 0, 5 * 16 : 6 * 16, 0] = 1.0
    got = prefill_blocks(q, k, 6 * 16, bs, sinks=0, window=1, top_k=2)
    assert torch.equal(got, torch.tensor([[[[1, 3, 6]]]]))
    # no block past the query block's last position is ever listed
    q2 = torch.randn(1, 4, 50, 16)
    k2 = torch.randn(1, 2, 77, 16)
    got = prefill_blocks(q2, k2, 27, 16, sinks=2, window=3, top_k=100, forced=torch.ones(5, dtype=torch.bool))
    for i in range(got.shape[2]):
        last = 27 + min((i + 1) * 16, 50) - 1
        listed = got[0, 0, i][got[0, 0, i] >= 0]
        assert listed.tolist() == list(range(last // 16 + 1))  # top_k covering everything: all visible blocks


# -- the attention ------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_kernel_equals_reference(shape, kv_dtype):
    q, k, v, blocks, start, bs, scale = _case(shape, kv_dtype)
    expected = block_sparse_prefill_reference(q, k, v, blocks, start, bs, scale)
    torch.testing.assert_close(block_sparse_prefill(q, k, v, blocks, start, bs, scale, backend="triton"), expected)


@pytest.mark.parametrize("chunk_bytes", [1, 2 << 20])
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_path_equals_reference(shape, kv_dtype, chunk_bytes):
    q, k, v, blocks, start, bs, scale = _case(shape, kv_dtype)
    expected = block_sparse_prefill_reference(q, k, v, blocks, start, bs, scale)
    got = block_sparse_prefill(q, k, v, blocks, start, bs, scale, backend="torch", chunk_bytes=chunk_bytes)
    # Over a bf16 cache the torch path multiplies in bf16 (the reference in fp32): bf16's precision, absolute.
    tol = {} if kv_dtype == torch.float32 else {"atol": 2e-2, "rtol": 0}
    torch.testing.assert_close(got, expected, **tol)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_block_selected_equals_dense_causal(shape, backend):
    start, bs = shape[4], shape[6]
    q, k, v, _, _, _, scale = _case(shape, torch.float32)
    blocks = prefill_blocks(q, k, start, bs, sinks=0, window=1, top_k=10_000)
    got = block_sparse_prefill(q, k, v, blocks, start, bs, scale, backend=backend)
    torch.testing.assert_close(got, _dense_causal(q, k, v, start, scale))


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_hand_made_lists_padding_and_dtype(backend):
    q, k, v, _, start, bs, scale = _case((1, 6, 2, 16, 37, 90, 16), torch.float32)
    nq = 6
    blocks = torch.full((1, 2, nq, 3), -1, dtype=torch.long)
    blocks[0, 0, :, 0] = 0  # head group 0: only the sink block; query rows all see it (positions >= 37)
    blocks[0, 1, 2, :2] = torch.tensor([3, 5])  # group 1, query block 2 (positions 69-84): blocks 3 and 5
    got = block_sparse_prefill(q.bfloat16(), k, v, blocks, start, bs, scale, backend=backend)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, block_sparse_prefill_reference(q.bfloat16(), k, v, blocks, start, bs, scale))
    assert torch.equal(got[0, 3:, :32], torch.zeros(3, 32, 16, dtype=torch.bfloat16))  # nothing listed: zeros


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_an_empty_selection_gives_zeros(backend):
    q, k, v, _, start, bs, scale = _case((1, 6, 2, 16, 37, 90, 16), torch.float32)
    blocks = torch.empty(1, 2, 6, 0, dtype=torch.long)
    assert torch.equal(block_sparse_prefill(q, k, v, blocks, start, bs, scale, backend=backend), torch.zeros_like(q))
