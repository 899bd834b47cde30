"""Lockstep decoding after a shared prefix (model_runtime/batch.py): the same logits as one sequence at a time, and
the two features on it, candidates and grouped batches, give what `complete` gives."""

from __future__ import annotations

import pytest
import torch
from repocomplete.model_runtime.batch import Lockstep, SuffixKV, shared_groups, unique_candidates
from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import Completion, CompletionRequest, Engine
from repocomplete.model_runtime.errors import ConfigError
from repocomplete.model_runtime.fast_llama import FastLlama
from repocomplete.model_runtime.kv_cache import SlabCache
from repocomplete.model_runtime.templates import PromptParts


def _fast(groups: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=96, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=6 // groups, max_position_embeddings=512)
    return FastLlama(LlamaForCausalLM(config).eval())


def _single(fast, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """Logits after each of `tokens`, one sequence decoding over the slab: [len(tokens), vocab]."""
    cache = SlabCache(len(fast.layers))
    fast(torch.tensor([prompt]), cache)
    return torch.stack([fast(torch.tensor([[t]]), cache) for t in tokens])


@pytest.mark.parametrize("groups", [1, 3])
def test_lockstep_logits_equal_one_sequence_at_a_time(groups):
    fast = _fast(groups)
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 512, (40,), generator=gen).tolist()
    seqs = torch.randint(0, 512, (3, 6), generator=gen)
    with torch.inference_mode():
        slab = SlabCache(len(fast.layers))
        fast(torch.tensor([prompt[:-1]]), slab)  # the shared prefix: the prompt but its last token
        run = Lockstep(fast, slab, len(prompt) - 1)
        got = [run.step(torch.tensor([[prompt[-1]]] * 3))]
        for t in range(5):
            got.append(run.step(seqs[:, t : t + 1]))
        got = torch.stack(got, dim=1)  # [3, 6, vocab]
        for b in range(3):
            expected = torch.cat([_single(fast, prompt[:-1], [prompt[-1]]), _single(fast, prompt, seqs[b, :5].tolist())])
            torch.testing.assert_close(got[b], expected, rtol=1e-4, atol=1e-4)
    assert slab.length == len(prompt) - 1  # the shared prefix is never written to


def test_multi_row_tails_and_dropped_sequences():
    """Tails of several tokens run as one step; sequences that leave (keep) do not disturb the others."""
    fast = _fast(3)
    gen = torch.Generator().manual_seed(2)
    head = torch.randint(0, 512, (33,), generator=gen).tolist()
    tails = torch.randint(0, 512, (3, 4), generator=gen)
    nxt = torch.randint(0, 512, (3, 3), generator=gen)
    with torch.inference_mode():
        slab = SlabCache(len(fast.layers))
        fast(torch.tensor([head]), slab)
        run = Lockstep(fast, slab, len(head))
        first = run.step(tails)
        run.keep([0, 2])  # sequence 1 finished
        after = [run.step(nxt[[0, 2], t : t + 1]) for t in range(3)]
        for row, b in enumerate([0, 2]):
            prompt = head + tails[b].tolist()
            expected = _single(fast, prompt, nxt[b].tolist())
            torch.testing.assert_close(first[b], _single(fast, head + tails[b, :3].tolist(), [int(tails[b, 3])])[0],
                                       rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(torch.stack([a[row] for a in after]), expected, rtol=1e-4, atol=1e-4)


def test_suffix_buffers_grow_by_doubling_and_keep_their_rows():
    kv = SuffixKV(1, capacity=2)
    for t in range(5):
        k = torch.full((2, 1, 1, 4), float(t))
        keys, _ = kv.update(0, k, k)
    assert keys.shape[2] == 8 and kv.length == 5
    assert keys[0, 0, :5, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_shared_groups_group_neighbours_with_a_long_common_head():
    a = list(range(20)) + [7, 8]
    b = list(range(20)) + [9]
    c = list(range(10)) + [50] * 12  # shares 10: too little
    d = list(range(18))  # shares 18 with a and b: the group's head leaves d one token of its own
    groups = shared_groups([a, b, c, d], [True] * 4, 16)
    assert groups == [([3, 0, 1], 17), ([2], 0)]  # in prompt order
    assert shared_groups([a, b, c, d], [True, False, True, True], 16) == [([3, 0], 17), ([1], 0), ([2], 0)]
    assert shared_groups([a, b], [True, True], 21) == [([0], 0), ([1], 0)]
    # prompts that share a head but go on for long apart run one by one (the prefix cache serves the head)
    long_a, long_b = a + [1] * 300, b + [2] * 300
    assert shared_groups([long_a, long_b, d], [True] * 3, 16) == [([2], 0), ([0], 0), ([1], 0)]
    assert shared_groups([long_a, long_b], [True] * 2, 16, max_tail=400) == [([0, 1], 20)]


def test_unique_candidates_keep_the_first_and_drop_empty_and_repeated():
    texts = ["", "x", "", "x", " ", "y"]
    got = unique_candidates([Completion(t, "eos") for t in texts])
    assert [c.text for c in got] == ["", "x", "y"]


@pytest.mark.parametrize("n", [0, 9])
def test_candidates_out_of_range_are_rejected(n):
    with pytest.raises(ConfigError, match="candidates"):
        RuntimeConfig(candidates=n).validate()
    assert "--candidates" in RuntimeConfig(candidates=3).to_argv()


# -- the features on the tiny model ---------------------------------------------------------------------------


@pytest.fixture
def config(tiny_config):
    return tiny_config.replace(max_new_tokens=8)


PREFIX = "def parse(text):\n    out = []\n    for line in text.split():\n        out.append("


def test_one_candidate_is_complete(tiny_loaded, config):
    request = CompletionRequest(PromptParts(PREFIX, ")\n"))
    expected = Engine(tiny_loaded, config).complete(request)
    got = Engine(tiny_loaded, config).complete_candidates(request, 1)
    assert [c.text for c in got] == [expected.text] and got[0].raw_text == expected.raw_text


@pytest.mark.parametrize("fast_forward", [True, False])
def test_three_candidates_are_distinct_and_the_first_is_complete(tiny_loaded, tiny_model_dir, config, fast_forward):
    loaded = tiny_loaded
    if not fast_forward:
        from repocomplete.model_runtime.loading import load_model

        loaded = load_model(config.replace(fast_forward=False))
        assert not isinstance(loaded.forward, FastLlama)
    request = CompletionRequest(PromptParts(PREFIX, ")\n"))
    expected = Engine(loaded, config).complete(request)
    engine = Engine(loaded, config.replace(candidates=3))
    got = engine.complete_candidates(request)
    assert got[0].text == expected.text and got[0].raw_text == expected.raw_text
    assert len(got) == 3 and len({c.text for c in got}) == 3 and all(c.text for c in got[1:])
    # Again (the prompt now in the prefix cache: the lockstep batch or the one-by-one fallback): the greedy first is
    # the same; the samples are seeded, but on this random model's flat distribution they move with the logits' last
    # bits (a cached prefill, the thread count under load), so only what they promise is checked.
    again = engine.complete_candidates(request)
    assert again[0].text == got[0].text and len({c.text for c in again}) == 3 and all(c.text for c in again)


def test_grouped_batch_equals_complete_one_by_one_in_order(tiny_loaded, config, monkeypatch):
    from repocomplete.model_runtime import batch

    ran = []
    run_group = batch._run_group
    monkeypatch.setattr(batch, "_run_group", lambda *a: ran.append((a[3], a[4])) or run_group(*a))
    head = "import os\nimport sys\n\n\ndef main(argv):\n    path = os.path.join(argv[0], 'data')\n"
    prefixes = [head + "    x = ", "class C:\n    ", head + "    y = ", head + "    return len(", head + "    z = f("]
    requests = [CompletionRequest(PromptParts(p), multiline=i % 2 == 0) for i, p in enumerate(prefixes)]
    engine = Engine(tiny_loaded, config)
    prompts = [engine.heal(engine.encode(r.parts)[1], r.parts)[0] for r in requests]
    groups = shared_groups(prompts, [True] * len(prompts), config.block_size)
    assert max(len(g) for g, _ in groups) == 4  # the four with the shared head form one group
    assert isinstance(engine.forward, FastLlama)
    batched = engine.complete_batch(requests)
    assert [sorted(g) for g, _ in ran] == [[0, 2, 3, 4]]  # the lockstep path ran, for the group
    single = [Engine(tiny_loaded, config).complete(r) for r in requests]
    assert [r.raw_text for r in batched] == [r.raw_text for r in single]
    assert [(r.text, r.stop_reason) for r in batched] == [(r.text, r.stop_reason) for r in single]


def test_the_benchmark_compares_the_same_arithmetic(tiny_loaded):
    from repocomplete.bench.shared_prefix import run_shared_prefix_bench

    report = run_shared_prefix_bench(tiny_loaded, prompt_tokens=40, sequences=3, new_tokens=4)
    assert (report["sequences"], report["new_tokens"], report["forward"]) == (3, 4, "fast-llama")
    assert report["max_logit_diff"] < 1e-3  # the last step of each sequence, both ways
