"""kernels/topk_decode.py: the summaries, the Quest bound, the block choice, and the attention (the Triton kernel under
TRITON_INTERPRET=1 on CPU tensors, and the torch CPU path) against plain torch references."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels module defines its @triton.jit functions

import pytest
import torch
from helpers import needs_interpreted_triton
from repocomplete.kernels import topk_decode as td
from repocomplete.kernels.topk_decode import (
    block_scores,
    block_summaries,
    choose_blocks,
    dense_decode_reference,
    topk_decode_attention,
    topk_decode_reference,
)


needs_triton = needs_interpreted_triton(getattr(td, "_topk_decode_split_kernel", None))

# (batch, query heads, kv heads, head dim, length, buffer length, block size): GQA 1, 3 and 4; ragged ends.
SHAPES = [
    (1, 2, 2, 16, 37, 37, 16),
    (2, 6, 2, 16, 150, 160, 16),
    (1, 8, 2, 64, 200, 200, 32),
    (1, 3, 1, 64, 96, 100, 32),
    (2, 4, 1, 16, 65, 80, 16),
]


def _case(shape, kv_dtype, seed=0, top_k=2):
    b, h, hkv, d, length, lbuf, bs = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, d, generator=g)
    k = torch.randn(b, hkv, lbuf, d, generator=g).to(kv_dtype)
    v = torch.randn(b, hkv, lbuf, d, generator=g).to(kv_dtype)
    kmin, kmax = block_summaries(k[:, :, :length], bs)
    nb = kmin.shape[2]
    forced = torch.zeros(nb, dtype=torch.bool)
    forced[0] = forced[-1] = True  # a sink and the (ragged) last block
    blocks = choose_blocks(block_scores(q, kmin, kmax, d**-0.5), forced, top_k)
    return q, k, v, blocks, length, bs, d**-0.5


def _all_blocks(b, hkv, length, bs):
    nb = -(-length // bs)
    return torch.arange(nb).expand(b, hkv, nb).contiguous()


# -- summaries, scores, choice ------------------------------------------------------------------------------------


def test_summaries_of_a_ragged_last_block_ignore_the_rows_past_length():
    buf = torch.randn(1, 2, 48, 4)
    buf[:, :, 37:] = 1e6  # rows past L in the buffer must not leak into the last block's summary
    buf[:, :, 37:, 1] = -1e6
    kmin, kmax = block_summaries(buf[:, :, :37], 16)
    assert kmin.shape == kmax.shape == (1, 2, 3, 4)
    for j, (lo, hi) in enumerate([(0, 16), (16, 32), (32, 37)]):
        torch.testing.assert_close(kmin[:, :, j], buf[:, :, lo:hi].amin(dim=2), rtol=0, atol=0)
        torch.testing.assert_close(kmax[:, :, j], buf[:, :, lo:hi].amax(dim=2), rtol=0, atol=0)
    assert kmax.abs().max() < 1e5


def test_block_scores_are_the_quest_bound_maxed_over_the_group():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 8, generator=g)
    k = torch.randn(2, 2, 40, 8, generator=g)
    kmin, kmax = block_summaries(k, 16)
    got = block_scores(q, kmin, kmax, 0.5)
    assert got.shape == (2, 2, 3) and got.dtype == torch.float32
    expected = torch.empty(2, 2, 3)
    for b in range(2):
        for hkv in range(2):
            for j in range(3):
                per_head = [
                    sum(max(q[b, hkv * 3 + i, e] * kmin[b, hkv, j, e], q[b, hkv * 3 + i, e] * kmax[b, hkv, j, e])
                        for e in range(8))
                    for i in range(3)
                ]
                expected[b, hkv, j] = max(per_head) * 0.5
                # an upper bound on every head's true block maximum
                rows = k[b, hkv, j * 16 : (j + 1) * 16]
                for i in range(3):
                    assert (rows @ q[b, hkv * 3 + i]).max() * 0.5 <= got[b, hkv, j] + 1e-5
    torch.testing.assert_close(got, expected)


def test_choose_blocks_exact_indices():
    scores = torch.tensor([[[5.0, 1.0, 9.0, 3.0, 7.0, 2.0], [0.0, 8.0, 1.0, 6.0, 2.0, 4.0]]])  # [1, 2, 6]
    forced = torch.tensor([True, False, False, False, False, True])
    got = choose_blocks(scores, forced, 2)
    assert torch.equal(got, torch.tensor([[[0, 2, 4, 5], [0, 1, 3, 5]]]))
    # top_k larger than the unforced count: everything, S = NB
    assert torch.equal(choose_blocks(scores, forced, 10), torch.arange(6).expand(1, 2, 6))
    # top_k 0: only the forced ones
    assert torch.equal(choose_blocks(scores, forced, 0), torch.tensor([[[0, 5], [0, 5]]]))
    # per-row forced masks of different sizes: padded with -1 to the widest row
    forced_rows = torch.tensor([[[True, True, True, False, False, False], [False] * 6]])
    got = choose_blocks(scores, forced_rows, 1)
    assert torch.equal(got, torch.tensor([[[0, 1, 2, 4], [1, -1, -1, -1]]]))
    # ties keep the lower index
    assert torch.equal(choose_blocks(torch.zeros(1, 1, 5), torch.zeros(5, dtype=torch.bool), 2),
                       torch.tensor([[[0, 1]]]))
    # eligible (prefill's causal visibility): a forced block that is not eligible is dropped
    eligible = torch.tensor([True, True, True, True, False, False])
    got = choose_blocks(scores, forced, 1, eligible=eligible)
    assert torch.equal(got, torch.tensor([[[0, 2], [0, 1]]]))


# -- the attention ------------------------------------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("splits", [1, 3])
def test_triton_kernel_equals_reference(shape, kv_dtype, splits):
    q, k, v, blocks, length, bs, scale = _case(shape, kv_dtype)
    expected = topk_decode_reference(q, k, v, blocks, bs, length, scale)
    got = topk_decode_attention(q, k, v, blocks, bs, length, scale, backend="triton", num_splits=splits)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("kv_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_path_equals_reference(shape, kv_dtype):
    q, k, v, blocks, length, bs, scale = _case(shape, kv_dtype)
    expected = topk_decode_reference(q, k, v, blocks, bs, length, scale)
    # The torch path multiplies in the cache's dtype (bf16 products, as the dense decode does), the reference in fp32.
    tol = {} if kv_dtype == torch.float32 else {"atol": 1e-2, "rtol": 1e-2}
    got = topk_decode_attention(q, k, v, blocks, bs, length, scale, backend="torch")
    torch.testing.assert_close(got, expected, **tol)
    assert topk_decode_attention(q, k, v, blocks, bs, length, scale).shape == q.shape  # "auto" on CPU: torch


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_block_selected_equals_dense(shape, backend):
    b, _, hkv, _, length, _, bs = shape
    q, k, v, _, _, _, scale = _case(shape, torch.float32)
    blocks = choose_blocks(torch.zeros(b, hkv, -(-length // bs)), torch.zeros(-(-length // bs), dtype=torch.bool),
                           top_k=10_000)
    assert torch.equal(blocks, _all_blocks(b, hkv, length, bs))
    got = topk_decode_attention(q, k, v, blocks, bs, length, scale, backend=backend)
    torch.testing.assert_close(got, dense_decode_reference(q, k, v, length, scale))


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_padding_dtypes_and_empty_selection(backend):
    q, k, v, _, length, bs, scale = _case((1, 6, 2, 16, 70, 80, 16), torch.float32)
    blocks = torch.tensor([[[1, 4, -1], [-1, -1, -1]]])  # head 1 selects nothing: zeros
    got = topk_decode_attention(q.bfloat16(), k, v, blocks, bs, length, scale, backend=backend)
    assert got.dtype == torch.bfloat16
    expected = topk_decode_reference(q.bfloat16(), k, v, blocks, bs, length, scale)
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[0, 3:], torch.zeros(3, 16, dtype=torch.bfloat16))


def test_torch_path_reads_a_slice_of_a_bigger_buffer_without_copying_it():
    q, k, v, blocks, length, bs, scale = _case((2, 6, 2, 16, 150, 160, 16), torch.float32)
    big_k = torch.zeros(2, 2, 300, 16)
    big_v = torch.zeros(2, 2, 300, 16)
    big_k[:, :, :160], big_v[:, :, :160] = k, v
    table, sb, sh, sl = td._row_table(big_k[:, :, :160])
    assert table.data_ptr() == big_k.data_ptr() and (sb, sh, sl) == (600, 300, 1)
    got = topk_decode_attention(q, big_k[:, :, :160], big_v[:, :, :160], blocks, bs, length, scale, backend="torch")
    torch.testing.assert_close(got, topk_decode_reference(q, k, v, blocks, bs, length, scale))
    # a non-contiguous layout (heads last) falls back to a copy and still agrees
    kt = k.transpose(1, 2).contiguous().transpose(1, 2)
    vt = v.transpose(1, 2).contiguous().transpose(1, 2)
    got = topk_decode_attention(q, kt, vt, blocks, bs, length, scale, backend="torch")
    torch.testing.assert_close(got, topk_decode_reference(q, k, v, blocks, bs, length, scale))


def test_backend_argument_is_checked():
    q, k, v, blocks, length, bs, scale = _case((1, 2, 2, 16, 37, 37, 16), torch.float32)
    with pytest.raises(ValueError):
        topk_decode_attention(q, k, v, blocks, bs, length, scale, backend="cuda")


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_an_empty_selection_gives_zeros(backend):
    q, k, v, _, length, bs, scale = _case((1, 6, 2, 16, 70, 80, 16), torch.float32)
    got = topk_decode_attention(q, k, v, torch.empty(1, 2, 0, dtype=torch.long), bs, length, scale, backend=backend)
    assert torch.equal(got, torch.zeros_like(q))


def test_the_kernels_import_and_run_without_triton():
    """A CPU machine without triton: the modules import, report HAVE_TRITON False and run their torch paths."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"  # `import triton` now raises ImportError
        "import torch\n"
        "from repocomplete.kernels import topk_decode as td, block_sparse_prefill as bsp\n"
        "assert not td.HAVE_TRITON and not bsp.HAVE_TRITON\n"
        "q, k = torch.randn(1, 4, 16), torch.randn(1, 2, 40, 16)\n"
        "blocks = torch.tensor([[[0, 2], [1, -1]]])\n"
        "out = td.topk_decode_attention(q, k, k, blocks, 16, 40, 0.25)\n"
        "torch.testing.assert_close(out, td.topk_decode_reference(q, k, k, blocks, 16, 40, 0.25))\n"
        "qp = torch.randn(1, 4, 20, 16)\n"
        "b = bsp.prefill_blocks(qp, k, 20, 16, 1, 1, 1)\n"
        "torch.testing.assert_close(bsp.block_sparse_prefill(qp, k, k, b, 20, 16, 0.25),\n"
        "                           bsp.block_sparse_prefill_reference(qp, k, k, b, 20, 16, 0.25))\n"
        "try:\n"
        "    td.topk_decode_attention(q, k, k, blocks, 16, 40, 0.25, backend='triton')\n"
        "except RuntimeError:\n"
        "    print('ok')\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_box_scores_equal_the_quest_bound_of_min_and_max():
    torch.manual_seed(1)
    k = torch.randn(2, 3, 96, 16)
    kmin, kmax = block_summaries(k, 32)
    box = torch.cat(((kmax + kmin) / 2, (kmax - kmin) / 2), dim=-1)
    q = torch.randn(2, 6, 16)
    torch.testing.assert_close(td.box_scores(q, box), block_scores(q, kmin, kmax, 1.0))
    rows = torch.randn(2, 6, 4, 16)  # several rows: the max over them
    expected = torch.stack([block_scores(rows[:, :, r], kmin, kmax, 1.0) for r in range(4)]).amax(0)
    torch.testing.assert_close(td.box_scores(rows, box), expected)


@pytest.mark.parametrize("backend", [pytest.param("triton", marks=needs_triton), "torch"])
def test_the_order_of_the_listed_blocks_does_not_matter(backend):
    # The engine lists its top-k blocks first and the forced ones after them (unsorted).
    q, k, v, blocks, length, bs, scale = _case(SHAPES[1], torch.float32)
    expected = topk_decode_reference(q, k, v, blocks, bs, length, scale)
    reordered = blocks.flip(-1)
    torch.testing.assert_close(topk_decode_attention(q, k, v, reordered, bs, length, scale, backend=backend), expected)
