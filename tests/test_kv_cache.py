"""Prefix-KV cache: hashing, the block pool, the manager, and reuse through the engine on a tiny model."""

from __future__ import annotations

import pytest
import torch

from repocomplete.model_runtime.engine import CompletionRequest, Engine
from repocomplete.model_runtime.errors import SlabFull
from repocomplete.model_runtime.kv_cache import BlockPool, PoolFull, PrefixCache, SlabCache, SlabLayer, hash_blocks
from repocomplete.model_runtime.templates import PromptParts


def kv(fill: float, n_bytes_elems: int = 8) -> torch.Tensor:
    return torch.full((n_bytes_elems,), float(fill))  # 8 float32 = 32 bytes


# -- hashing -----------------------------------------------------------------------------------------------------


def test_hash_blocks_covers_only_full_blocks_and_chains():
    assert len(hash_blocks(list(range(10)), 4)) == 2
    a = hash_blocks([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = hash_blocks([1, 2, 3, 4, 5, 6, 7, 9], 4)
    c = hash_blocks([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert a[0] == b[0] and a[1] != b[1]
    # Block 1 has the same tokens in a and c, but its hash covers the changed block 0 before it.
    assert a[0] != c[0] and a[1] != c[1]
    assert hash_blocks([1, 2, 3, 4], 4, salt=1) != hash_blocks([1, 2, 3, 4], 4, salt=2)


# -- block pool --------------------------------------------------------------------------------------------------


def test_pool_lookup_returns_leading_run_and_exact_ids():
    pool = BlockPool(capacity_bytes=1000)
    b0 = pool.put(10, 0, kv(0))
    b1 = pool.put(11, 1, kv(1))
    assert (b0.block_id, b1.block_id) == (0, 1)
    assert [b.block_id for b in pool.lookup([10, 11, 12])] == [0, 1]
    assert pool.lookup([11]) != [] and pool.lookup([99, 10]) == []
    assert (pool.stats.hits, pool.stats.misses) == (3, 3)  # [99, 10] misses both: the run stops at 99
    assert pool.put(10, 0, kv(5)) is b0  # storing an existing hash keeps the block


def test_pool_evicts_least_recently_used_under_the_bound():
    pool = BlockPool(capacity_bytes=3 * 32)
    for h in (1, 2, 3):
        pool.put(h, 0, kv(h))
    pool.lookup([1])  # 2 is now the least recently used
    pool.put(4, 0, kv(4))
    assert set(pool.blocks) == {1, 3, 4}
    assert pool.used_bytes == 3 * 32 and pool.stats.evicted == 1


def test_pool_evicts_deepest_block_first_among_equally_old():
    pool = BlockPool(capacity_bytes=3 * 32)
    blocks = [pool.put(h, depth, kv(h)) for depth, h in enumerate((1, 2, 3))]
    pool.touch(blocks)  # one prompt's chain: same timestamp
    pool.put(9, 0, kv(9))
    assert set(pool.blocks) == {1, 2, 9}


def test_pool_full_is_a_typed_result():
    pool = BlockPool(capacity_bytes=16)
    result = pool.put(1, 0, kv(1))
    assert result == PoolFull(needed_bytes=32, capacity_bytes=16)
    pool = BlockPool(capacity_bytes=32)
    pool.put(1, 0, kv(1))
    assert isinstance(pool.put(2, 0, kv(2), keep=frozenset({1})), PoolFull)
    assert set(pool.blocks) == {1}


# -- manager over a slab -----------------------------------------------------------------------------------------


def _filled_slab(n_tokens: int, n_layers: int = 2) -> SlabCache:
    slab = SlabCache(n_layers, capacity=4)
    for layer_idx, layer in enumerate(slab.layers):
        k = torch.arange(n_tokens, dtype=torch.float32).view(1, 1, n_tokens, 1).expand(1, 2, n_tokens, 3) + layer_idx
        layer.update(k.contiguous(), -k.contiguous())
    slab.tokens = list(range(100, 100 + n_tokens))
    return slab


def test_prefix_cache_stores_full_blocks_and_matches_them():
    cache = PrefixCache(block_size=4, capacity_bytes=10**6)
    slab = _filled_slab(10)
    assert cache.store(slab.tokens, slab) == 2  # 10 tokens = 2 full blocks of 4
    assert cache.store(slab.tokens, slab) == 0
    match = cache.match(slab.tokens[:9] + [7, 7, 7])
    assert match.tokens == 8 and [b.depth for b in match.blocks] == [0, 1]
    assert cache.match([1] + slab.tokens[1:]).tokens == 0
    # The stored block holds layer 1's keys of positions 4..7.
    torch.testing.assert_close(match.blocks[1].kv[1, 0, 0, :, 0], torch.tensor([5.0, 6.0, 7.0, 8.0]))
    # Written back into an empty slab, the blocks reproduce the original buffers.
    other = SlabCache(2)
    other.write_blocks(0, [b.kv for b in match.blocks])
    assert other.length == 8
    torch.testing.assert_close(other.layers[1].keys, slab.layers[1].keys[:, :, :8])
    torch.testing.assert_close(other.layers[0].values, slab.layers[0].values[:, :, :8])


def test_slab_grows_past_its_capacity_and_truncates():
    slab = _filled_slab(10)
    assert slab.layers[0].capacity >= 10 and slab.length == 10
    slab.truncate(3)
    assert slab.length == 3 and slab.tokens == [100, 101, 102]
    assert slab.layers[0].keys.shape[-2] == 3


# -- through the engine on a tiny model ---------------------------------------------------------------------------


@pytest.fixture
def engine(tiny_loaded, tiny_config):
    return Engine(tiny_loaded, tiny_config.replace(block_size=4))


def _prompt(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(100, 20000, (n,), generator=g).tolist()


def test_logits_with_reuse_equal_logits_without(engine, tiny_loaded, tiny_config):
    cold = Engine(tiny_loaded, tiny_config.replace(prefix_cache=False))
    first = _prompt(37)
    edited = first[:30] + _prompt(9, seed=1)
    engine.logits_for(first)
    reused_logits, reused = engine.logits_for(edited)
    fresh_logits, fresh = cold.logits_for(edited)
    assert (reused, fresh) == (30, 0)
    torch.testing.assert_close(reused_logits, fresh_logits, rtol=1e-4, atol=1e-4)
    # From the block pool alone (a fresh engine that saw only the first prompt, its slab emptied): same logits.
    pooled_engine = Engine(tiny_loaded, tiny_config.replace(block_size=4))
    pooled_engine.logits_for(first)
    pooled_engine.slab.reset()
    pooled_logits, pooled = pooled_engine.logits_for(edited)
    assert pooled == 28  # 30 common tokens -> 7 full blocks of 4
    torch.testing.assert_close(pooled_logits, fresh_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "edit_at, expect_slab, expect_pool",
    [(39, 39, 36), (21, 21, 20), (0, 0, 0)],  # an edit at the end, in the middle, at the start of a 40-token prompt
)
def test_reused_token_counts_after_edits(tiny_loaded, tiny_config, edit_at, expect_slab, expect_pool):
    prompt = _prompt(40)
    edited = list(prompt)
    edited[edit_at] = 7
    # Through the working slab (token granularity) ...
    engine = Engine(tiny_loaded, tiny_config.replace(block_size=4))
    engine.logits_for(prompt)
    assert engine.logits_for(edited)[1] == expect_slab
    # ... and through the block pool alone (full blocks only).
    engine = Engine(tiny_loaded, tiny_config.replace(block_size=4))
    engine.logits_for(prompt)
    engine.slab.reset()
    assert engine.logits_for(edited)[1] == expect_pool


def test_typing_reuses_all_but_the_new_token(engine):
    prompt = _prompt(50)
    engine.logits_for(prompt)
    for extra in range(3):
        prompt = prompt + [500 + extra]
        assert engine.logits_for(prompt)[1] == len(prompt) - 1


def test_eviction_keeps_the_pool_under_its_bound(tiny_loaded, tiny_config):
    probe = Engine(tiny_loaded, tiny_config.replace(block_size=4))
    probe.logits_for(_prompt(5))
    block_bytes = probe.prefix_cache.pool.used_bytes  # one block
    bound = 6 * block_bytes
    engine = Engine(tiny_loaded, tiny_config.replace(block_size=4, prefix_cache_bytes=bound))
    for seed in range(5):
        engine.logits_for(_prompt(17, seed=seed))  # 4 blocks each
        assert engine.prefix_cache.pool.used_bytes <= bound
    assert len(engine.prefix_cache.pool) == 6 and engine.prefix_cache.pool.stats.evicted == 14
    # The most recent prompt is still fully cached; the oldest is gone.
    engine.slab.reset()
    assert engine.logits_for(_prompt(17, seed=4))[1] == 16
    engine.slab.reset()
    assert engine.logits_for(_prompt(17, seed=0))[1] == 0


def test_prefix_cache_off_reuses_nothing(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(prefix_cache=False))
    prompt = _prompt(20)
    engine.logits_for(prompt)
    assert engine.logits_for(prompt)[1] == 0
    assert len(engine.prefix_cache.pool) == 0


# -- bounds ------------------------------------------------------------------------------------------------------


def test_the_slab_grows_up_to_its_bound_and_never_past_it():
    slab = SlabCache(2, capacity=4, max_tokens=10)
    k = torch.zeros(1, 2, 6, 3)
    for layer in slab.layers:
        layer.update(k, k)
    assert slab.layers[0].capacity == 8 and slab.room() == 4
    for layer in slab.layers:
        layer.update(k[:, :, :4], k[:, :, :4])
    assert slab.layers[0].capacity == 10 and slab.room() == 0  # doubling stops at the bound
    with pytest.raises(SlabFull):
        slab.layers[0].update(k[:, :, :1], k[:, :, :1])
    assert slab.length == 10 and slab.allocated_bytes() == 2 * 2 * (2 * 10 * 3) * 4  # layers, K+V, heads*rows*dim


def test_the_engine_keeps_the_slab_within_its_bound(tiny_loaded, tiny_config):
    config = tiny_config.replace(max_context_tokens=32, max_new_tokens=4)
    engine = Engine(tiny_loaded, config)
    assert config.slab_tokens == 36 and engine.slab.max_tokens == 36
    # A prompt far over the context: cut to the context, and a request for more tokens than the config's stops
    # when the slab is full.
    parts = PromptParts(prefix="def f(x):\n    return x + 1\n" * 40, suffix="", path="a.py")
    done = engine.complete(CompletionRequest(parts, max_new_tokens=200, multiline=True))
    assert done.prompt_tokens <= 32 and engine.slab.length <= 36
    assert engine.slab.layers[0].capacity <= 36
    # Token prompts handed in directly: a typed error past the bound, before any allocation.
    with pytest.raises(SlabFull):
        engine.logits_for(_prompt(37))
    with pytest.raises(SlabFull):
        engine.greedy_tokens(_prompt(30), 8)
    tokens, _, _ = engine.greedy_tokens(_prompt(30), 7)
    assert len(tokens) == 7 and engine.slab.length == 36


def test_one_prompt_larger_than_the_pool_stores_only_what_fits(tiny_loaded, tiny_config):
    probe = Engine(tiny_loaded, tiny_config.replace(block_size=4))
    probe.logits_for(_prompt(5))
    bound = 3 * probe.prefix_cache.pool.used_bytes  # three blocks
    engine = Engine(tiny_loaded, tiny_config.replace(block_size=4, prefix_cache_bytes=bound, prefill_chunk_tokens=8))
    engine.logits_for(_prompt(41))  # ten blocks, prefilled and stored in chunks
    assert engine.prefix_cache.pool.used_bytes <= bound and len(engine.prefix_cache.pool) == 3
    engine.slab.reset()
    assert engine.logits_for(_prompt(41))[1] == 12  # the first three blocks serve the next request
    assert engine.prefix_cache.pool.used_bytes <= bound


# -- long-prompt layout: reserved slab, block summaries, policy-salted hashes ----------------------------------------


def test_a_reserved_slab_never_reallocates_as_it_grows():
    slab = SlabCache(2, capacity=4, max_tokens=64, reserve=True, store_dtype=torch.bfloat16)
    k = torch.randn(1, 2, 5, 3)
    slab.layers[0].update(k, k)
    buffer = slab.layers[0].k_buf.data_ptr()
    assert slab.layers[0].capacity == 64 and slab.layers[0].k_buf.dtype == torch.bfloat16
    for _ in range(11):
        slab.layers[0].update(k, k)
    assert slab.layers[0].length == 60 and slab.layers[0].k_buf.data_ptr() == buffer  # grown in place
    assert slab.resident_bytes() == 2 * (2 * 60 * 3) * 2  # K+V, heads*rows*dim, bf16 (layer 1 holds nothing)


def test_block_summaries_bound_each_full_block_and_follow_truncation():
    layer = SlabLayer(capacity=8)
    k = torch.randn(1, 2, 10, 4)
    layer.update(k, k)
    kmin, kmax = layer.summaries(4)
    assert kmin.shape == (1, 2, 2, 4)  # two full blocks of 4; the last two rows form no summary yet
    torch.testing.assert_close(kmin[:, :, 1], k[:, :, 4:8].amin(dim=2))
    torch.testing.assert_close(kmax[:, :, 0], k[:, :, 0:4].amax(dim=2))
    layer.truncate(6)  # block 1 is cut: its summary goes
    assert layer.summarized == 1 and layer.summaries(4)[0].shape[2] == 1
    other = torch.full((1, 2, 6, 4), 7.0)
    layer.update(other, other)  # rows 6..11: block 1 now holds k[4:6] and 7s, block 2 only 7s
    kmin, kmax = layer.summaries(4)
    torch.testing.assert_close(kmax[:, :, 1], torch.maximum(k[:, :, 4:6].amax(dim=2), torch.tensor(7.0)))
    torch.testing.assert_close(kmin[:, :, 2], torch.full((1, 2, 4), 7.0))
    layer.write(0, other[:, :, :4], other[:, :, :4])  # a rewrite from 0 (prefix-cache reuse) drops every summary
    assert layer.summarized == 0 and layer.length == 4
    torch.testing.assert_close(layer.summaries(4)[0][:, :, 0], torch.full((1, 2, 4), 7.0))


def test_policy_salted_hashes_match_dense_ones_only_before_the_policy_starts():
    tokens = list(range(40))
    dense = hash_blocks(tokens, 8, salt=5)
    sparse = hash_blocks(tokens, 8, salt=5, policy=(("sparse", 16), 2))
    assert sparse[:2] == dense[:2] and all(a != b for a, b in zip(sparse[2:], dense[2:]))
    other = hash_blocks(tokens, 8, salt=5, policy=(("sparse", 24), 2))
    assert other[:2] == dense[:2] and all(a != b for a, b in zip(other[2:], sparse[2:]))
