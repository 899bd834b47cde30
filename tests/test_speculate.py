"""Speculative decoding with drafts from the prompt: the same greedy tokens as plain decoding, fewer forwards."""

from __future__ import annotations

import pytest
import torch

from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.engine import CompletionRequest, Engine
from repocomplete.model_runtime.loading import load_model
from repocomplete.model_runtime.speculate import PromptLookup
from repocomplete.model_runtime.templates import PromptParts

REPETITIVE = "".join(f"    result_{i} = compute(values[{i}], scale=2.0, name='item_{i}')\n" for i in range(12))


def test_lookup_drafts_what_followed_the_last_occurrence():
    lookup = PromptLookup([5, 6, 7, 8, 9, 1, 2, 5, 6])
    assert lookup.draft(3) == [7, 8, 9]  # after the earlier (5, 6)
    lookup.append(7)
    assert lookup.draft(2) == [8, 9]  # the longest suffix (5, 6, 7) decides
    assert PromptLookup([1, 2, 3]).draft(4) == []  # nothing repeats
    assert PromptLookup([4, 4]).draft(4) == []  # a single token is not enough to go on


def test_the_previous_completion_drafts_while_the_user_types_through_it():
    # The prompt now ends with the first tokens of what was completed last time.
    lookup = PromptLookup([10, 11, 20, 21], previous=[20, 21, 22, 23])
    assert lookup.draft(8) == [22, 23]  # stops at the end of the previous completion


def complete(engine: Engine, prefix: str, max_new: int = 24):
    return engine.complete(CompletionRequest(PromptParts(prefix), max_new_tokens=max_new, multiline=True))


@pytest.mark.parametrize("k", [1, 15])
def test_speculation_gives_the_plain_greedy_tokens_on_the_tiny_model(tiny_loaded, tiny_config, k):
    config = tiny_config.replace(token_healing=False, time_budget_s=600)
    plain = Engine(tiny_loaded, config.replace(speculative_tokens=0))
    fast = Engine(tiny_loaded, config.replace(speculative_tokens=k))
    for prefix in (REPETITIVE + "    result_12 = ", "def f(x):\n    return x\n\n\ndef g(x):\n    return "):
        want, got = complete(plain, prefix, 32), complete(fast, prefix, 32)
        assert (got.raw_text, got.generated_tokens, got.stop_reason) == (
            want.raw_text, want.generated_tokens, want.stop_reason)
        assert got.accepted_tokens <= got.draft_tokens
        # The cache is left holding the prompt and the tokens fed, whatever was rejected: the next request after it
        # completes as a fresh engine would.
        again, fresh = complete(fast, prefix + "x"), complete(Engine(tiny_loaded, config.replace(speculative_tokens=0)),
                                                              prefix + "x")
        assert again.raw_text == fresh.raw_text
        assert again.cached_tokens > 0


def test_sampling_does_not_speculate(tiny_loaded, tiny_config):
    engine = Engine(tiny_loaded, tiny_config.replace(temperature=0.8, seed=3, token_healing=False))
    result = complete(engine, REPETITIVE + "    result_12 = ")
    assert result.draft_tokens == 0


def test_speculation_gives_the_plain_greedy_tokens_on_the_embedded_model(smollm_dir):
    loaded = load_model(RuntimeConfig(model=str(smollm_dir), device="cpu", quantize="none"))
    # No time budget: on a busy machine it would cut the two runs at different tokens.
    config = RuntimeConfig(model=str(smollm_dir), quantize="none", time_budget_s=600)
    plain = Engine(loaded, config.replace(speculative_tokens=0))
    fast = Engine(loaded, config.replace(speculative_tokens=8))
    prompts = [
        REPETITIVE + "    result_12 = compute(",
        "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n\n    def __add__(self, other):\n",
    ]
    accepted = 0
    for prefix in prompts:
        want, got = complete(plain, prefix), complete(fast, prefix)
        assert got.raw_text == want.raw_text and got.generated_tokens == want.generated_tokens
        accepted += got.accepted_tokens
    assert accepted > 0  # the repetitive prompt's continuation was drafted and taken


def test_drafts_never_take_the_slab_past_its_bound(tiny_loaded, tiny_config):
    config = tiny_config.replace(token_healing=False, max_context_tokens=64, max_new_tokens=8, time_budget_s=600)
    engine = Engine(tiny_loaded, config)
    specials = torch.tensor(sorted(tiny_loaded.tokenizer.added_tokens_decoder))

    def no_end(input_ids, scores):  # the random model may pick a special token: all are stop tokens
        return scores.index_fill(1, specials, float("-inf"))

    result = engine.complete(CompletionRequest(PromptParts(REPETITIVE * 3), max_new_tokens=200, multiline=True,
                                               logits_processors=[no_end]))
    assert result.stop_reason in ("length", "indent", "blank_lines")
    assert result.prompt_tokens + result.generated_tokens <= config.slab_tokens + 1
    assert engine.slab.length <= config.slab_tokens
