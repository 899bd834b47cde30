"""Sparse attention in the engine (model_runtime/sparse.py): which blocks a query reads, equality with dense attention
when every block is read, both forwards (ours and transformers'), and a prefix cache that never mixes sparse and
dense K/V."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from repocomplete.kernels.block_sparse_prefill import block_sparse_prefill_reference
from repocomplete.kernels.topk_decode import topk_rows_attention
from repocomplete.model_runtime.engine import Engine, Span
from repocomplete.model_runtime.kv_cache import SlabLayer
from repocomplete.model_runtime.loading import load_model
from repocomplete.model_runtime.sparse import SparseAttention, SparsePolicy, context_blocks

PROMPT = torch.randint(100, 20000, (300,), generator=torch.Generator().manual_seed(3)).tolist()
# Tokens 0-2 template, 2-200 repository context (two items), 200-300 the current file.
SPANS = [Span("template", 0, 2), Span("context", 2, 120, 0, "a.py"), Span("template", 120, 124),
         Span("context", 124, 200, 1, "b.py"), Span("prefix", 200, 300)]


def sparse_config(config, **changes):
    knobs = dict(attention="sparse", sparse_block_tokens=16, block_size=16, sparse_sink_tokens=16,
                 sparse_window_tokens=32, sparse_top_k=2, kv_dtype="float32", speculative_tokens=0)
    knobs.update(changes)
    return config.replace(**knobs)


def test_only_blocks_of_repository_context_alone_are_candidates():
    blocks = context_blocks(SPANS, 300, 16)
    # block 0 holds the template; block 7 (112-127) the template between the items; blocks 12+ the current file
    assert blocks.tolist() == [False, True, True, True, True, True, True, False, True, True, True, True, False,
                               False, False, False, False, False, False]


def test_a_decode_query_reads_the_forced_blocks_and_its_top_k():
    policy = SparsePolicy(threshold=0, block=16, top_k=2, sinks=16, window=32)
    sparse = SparseAttention(policy, scale=1.0)
    sparse.set_spans(SPANS, 300)
    forced = sparse.forced(300)
    assert forced.nonzero().flatten().tolist() == [0, 7, 12, 13, 14, 15, 16, 17, 18]
    # Keys that make block 5 the best for K/V head 0 and block 9 for head 1 (q = +1 everywhere); 3 next.
    keys = torch.zeros(1, 2, 300, 4)
    keys[0, 0, 80:96], keys[0, 1, 144:160], keys[0, :, 48:64] = 3.0, 3.0, 1.0
    keys[0, :, 192:208] = 9.0  # a forced block scoring high takes no top-k place
    layer = SlabLayer(capacity=300)
    layer.update(keys, keys)
    q = torch.ones(1, 4, 1, 4)  # two query heads per K/V head
    blocks = sparse._decode_blocks(layer, q, 300)
    assert blocks[0, 0, -9:].tolist() == [0, 7, 12, 13, 14, 15, 16, 17, 18]  # the forced ones last, in order
    assert sorted(blocks[0, 0].tolist()) == [0, 3, 5, 7, 12, 13, 14, 15, 16, 17, 18]
    assert sorted(blocks[0, 1].tolist()) == [0, 3, 7, 9, 12, 13, 14, 15, 16, 17, 18]


@pytest.mark.parametrize("n", [1, 5])
def test_few_rows_attention_equals_the_reference(n):
    torch.manual_seed(0)
    b, h, hkv, d, length, bs = 1, 6, 2, 16, 150, 16
    k, v = torch.randn(b, hkv, 160, d), torch.randn(b, hkv, 160, d)
    q = torch.randn(b, h, n, d)
    # Sorted selections ending with the blocks of the new rows (no mask needed), and one with padding (mask path).
    for chosen in ([[0, 2, 5, 8, 9], [1, 3, 4, 8, 9]], [[0, 2, 8, 9, -1], [1, 3, 4, 8, 9]]):
        blocks = torch.tensor([chosen])
        expected = block_sparse_prefill_reference(q, k[:, :, :length], v[:, :, :length], blocks[:, :, None],
                                                  length - n, bs, 0.25)
        torch.testing.assert_close(topk_rows_attention(q, k, v, blocks, bs, length, 0.25), expected)


def _logits_through(engine, prompt, spans, steps=4):
    """The prompt's last logits, then those of `steps` greedy decode steps (through the prefix cache and slab)."""
    with torch.inference_mode():
        logits, _ = engine.logits_for(prompt, spans)
        out = [logits]
        for _ in range(steps):
            out.append(engine._decode(int(torch.argmax(out[-1]))))
    return torch.stack(out)


@pytest.mark.parametrize("fast", [True, False])
def test_reading_every_block_equals_dense_attention(tiny_loaded, tiny_config, tiny_model_dir, fast):
    loaded = tiny_loaded if fast else load_model(tiny_config.replace(fast_forward=False))
    assert (loaded.forward_name == "fast-llama") == fast
    dense = Engine(loaded, tiny_config.replace(attention="dense", kv_dtype="float32", speculative_tokens=0))
    everything = Engine(loaded, sparse_config(tiny_config, sparse_top_k=1000, prefill_chunk_tokens=96))
    few = Engine(loaded, sparse_config(tiny_config, sparse_top_k=1, prefill_chunk_tokens=96))
    expected = _logits_through(dense, PROMPT, SPANS)
    torch.testing.assert_close(_logits_through(everything, PROMPT, SPANS), expected, rtol=1e-4, atol=1e-4)
    # and with one block of context per head, it is not dense attention any more
    assert not torch.allclose(_logits_through(few, PROMPT, SPANS), expected, rtol=1e-4, atol=1e-4)


def test_auto_is_dense_below_its_threshold(tiny_loaded, tiny_config):
    dense = Engine(tiny_loaded, tiny_config.replace(attention="dense", kv_dtype="float32", speculative_tokens=0))
    auto = Engine(tiny_loaded, sparse_config(tiny_config, attention="auto", sparse_min_tokens=400, sparse_top_k=1))
    torch.testing.assert_close(_logits_through(auto, PROMPT, SPANS), _logits_through(dense, PROMPT, SPANS))


def test_the_prefix_cache_never_mixes_sparse_and_dense_blocks(tiny_loaded, tiny_config):
    dense = Engine(tiny_loaded, tiny_config.replace(attention="dense", kv_dtype="float32", block_size=16))
    sparse = Engine(tiny_loaded, sparse_config(tiny_config, attention="auto", sparse_min_tokens=100))
    cold = Engine(tiny_loaded, sparse_config(tiny_config, attention="auto", sparse_min_tokens=100))
    sparse.prefix_cache.pool = dense.prefix_cache.pool  # one pool, as if one engine changed its policy
    with torch.inference_mode():
        dense.logits_for(PROMPT, SPANS)
        logits, reused = sparse.logits_for(PROMPT, SPANS)
        # only the blocks before the sparse threshold (100 // 16 = 6 blocks) are dense-exact, and only they are reused
        assert reused == 96
        torch.testing.assert_close(logits, cold.logits_for(PROMPT, SPANS)[0])
        # the other way round: the dense engine finds the shared blocks and none of the sparse ones
        dense.prefix_cache.pool.clear()
        dense.slab.reset()
        sparse.slab.reset()
        sparse.logits_for(PROMPT, SPANS)
        assert dense.logits_for(PROMPT, SPANS)[1] == 96


def test_auto_stores_kv_in_bf16_from_the_threshold_on_and_keeps_the_rows(tiny_loaded, tiny_config, monkeypatch):
    monkeypatch.setattr("repocomplete.model_runtime.engine.bf16_matmuls_fast", lambda loaded: True)  # AVX-512 bf16
    engine = Engine(tiny_loaded, sparse_config(tiny_config, attention="auto", sparse_min_tokens=200, kv_dtype="auto"))
    dtype = lambda: engine.slab.layers[0].k_buf.dtype  # noqa: E731
    with torch.inference_mode():
        engine.logits_for(PROMPT[:150], SPANS)
        assert dtype() == torch.float32  # dense below the threshold: the measured (float32) form
        kept = engine.slab.layers[1].keys[:, :, :150].clone()
        assert engine.logits_for(PROMPT, SPANS)[1] == 150  # crossing it converts the slab and reuses its rows
        assert dtype() == torch.bfloat16
        torch.testing.assert_close(engine.slab.layers[1].keys[:, :, :150].float(), kept, atol=2e-2, rtol=1e-2)
        engine.logits_for(PROMPT[:120], SPANS)
        assert dtype() == torch.bfloat16  # still within half the threshold: no conversion back and forth
        engine.logits_for(PROMPT[:90], SPANS)
        assert dtype() == torch.float32


def test_where_bf16_matmuls_are_slow_sparse_attention_keeps_the_dense_dtype(tiny_loaded, tiny_config):
    from repocomplete.model_runtime.cpu_path import CpuPlan
    from repocomplete.model_runtime.engine import bf16_matmuls_fast
    from repocomplete.model_runtime.quantize import LinearPath

    assert not bf16_matmuls_fast(tiny_loaded)  # float32 weights, no plan: as on an AVX2-only CPU
    engine = Engine(tiny_loaded, sparse_config(tiny_config, kv_dtype="auto"))
    with torch.inference_mode():
        engine.logits_for(PROMPT, SPANS)
    assert engine.slab.layers[0].k_buf.dtype == torch.float32
    plan = lambda act: CpuPlan(LinearPath("int8", "bf16"), LinearPath(act, act), "fp32", "measured")  # noqa: E731
    assert bf16_matmuls_fast(dataclasses.replace(tiny_loaded, plan=plan("bf16")))
    assert not bf16_matmuls_fast(dataclasses.replace(tiny_loaded, plan=plan("fp32")))


@pytest.mark.parametrize("bad", [dict(attention="fast"), dict(kv_dtype="float16"), dict(sparse_block_tokens=24),
                                 dict(sparse_block_tokens=0), dict(sparse_top_k=-1), dict(sparse_window_tokens=-8)])
def test_bad_attention_settings_are_config_errors(bad):
    from repocomplete.model_runtime.config import RuntimeConfig
    from repocomplete.model_runtime.errors import ConfigError

    with pytest.raises(ConfigError):
        RuntimeConfig(**bad).validate()
