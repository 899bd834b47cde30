"""Our Llama-family forward gives transformers' logits, prefill and decode, with and without a cached prefix."""

from __future__ import annotations

import pytest
import torch

from repocomplete.model_runtime.config import RuntimeConfig
from repocomplete.model_runtime.fast_llama import build_forward, supports
from repocomplete.model_runtime.kv_cache import SlabCache
from repocomplete.model_runtime.loading import load_model


def _tiny(model_type: str, vocab: int = 512, **extra):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=512, **extra)
    if model_type == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def _reference_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("model_type, extra", [("llama", {}), ("llama", {"tie_word_embeddings": True}), ("qwen2", {})])
def test_prefill_then_decode_matches_transformers(model_type, extra):
    model = _tiny(model_type, **extra)
    ids = torch.randint(0, 512, (24,), generator=torch.Generator().manual_seed(1)).tolist()
    expected = _reference_logits(model, ids)  # before fusing: the plain transformers weights
    forward, name = build_forward(model)
    assert name == "fast-llama"
    with torch.inference_mode():
        cache = SlabCache(2)
        got = [forward(torch.tensor([ids[:10]]), cache)]  # prefill from empty
        got.append(forward(torch.tensor([ids[10:16]]), cache))  # prefill after a cached prefix
        for t in range(16, 24):
            got.append(forward(torch.tensor([[ids[t]]]), cache))  # decode
    torch.testing.assert_close(got[0], expected[9], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[1], expected[15], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack(got[2:]), expected[16:24], rtol=1e-4, atol=1e-4)
    # transformers' own forward still works on the re-pointed (fused) weights.
    torch.testing.assert_close(_reference_logits(model, ids), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_fast_forward_tracks_the_transformers_forward(tiny_model_dir, tmp_path, mode):
    base = dict(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", quantize=mode)
    fast = load_model(RuntimeConfig(**base))
    slow = load_model(RuntimeConfig(**base, fast_forward=False))
    assert (fast.forward_name, slow.forward_name) == ("fast-llama", "transformers")
    ids = torch.randint(100, 20000, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a = fast.forward(ids, SlabCache(2))
        b = slow.forward(ids, SlabCache(2))
    # Both bf16 with the same quantized weights; the fused kernel sums in another order: allow bf16 rounding.
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)
    assert int(a.argmax()) == int(b.argmax())


def test_unsupported_architectures_fall_back_to_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).eval()
    assert not supports(model)
    forward, name = build_forward(model)
    assert name == "transformers"
    with torch.inference_mode():
        cache = SlabCache(1)
        logits = forward(torch.tensor([[1, 2, 3]]), cache)
    assert logits.shape == (64,) and cache.length == 3
    assert not supports(_tiny("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0}))


@pytest.mark.parametrize("mode, tolerance", [("int8", 0.02), ("int4", 0.15)])
@pytest.mark.parametrize("act", ["bf16", "fp32"])
def test_quantized_linear_tracks_the_float_linear(mode, tolerance, act):
    from repocomplete.model_runtime.quantize import LinearPath, PlannedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 96, bias=True)
    path = LinearPath(mode, act)
    q = PlannedLinear(linear, path, path, torch.float32)
    for rows in (1, 40):  # the int kernel path and the de-quantized GEMM path
        x = torch.randn(rows, 128)
        with torch.inference_mode():
            expected = linear(x)
            got = q(x)
        assert got.dtype == torch.float32
        relative = (got - expected).norm() / expected.norm()
        assert relative < tolerance, f"{mode}/{act} rows={rows}: relative error {relative:.4f}"


def test_a_planned_linear_runs_each_phase_in_its_own_form():
    from repocomplete.model_runtime.quantize import DECODE_MAX_ROWS, LinearPath, PlannedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32, bias=False)
    q = PlannedLinear(linear, LinearPath("int8", "bf16"), LinearPath("fp32", "fp32"), torch.float32)
    x = torch.randn(DECODE_MAX_ROWS + 1, 64)
    with torch.inference_mode():
        # Prefill rows run the fp32 copy: exactly the float linear.
        torch.testing.assert_close(q(x), linear(x), rtol=1e-5, atol=1e-5)
        # Decode rows run int8 with bf16 activations: close, not exact.
        small = q(x[:DECODE_MAX_ROWS])
    assert not torch.equal(small, linear(x[:DECODE_MAX_ROWS]))
    torch.testing.assert_close(small, linear(x[:DECODE_MAX_ROWS]), rtol=0.05, atol=0.05)


def test_fusing_planned_linears_keeps_their_outputs():
    from repocomplete.model_runtime.fast_llama import fuse
    from repocomplete.model_runtime.quantize import LinearPath, PlannedLinear

    torch.manual_seed(0)
    parts = [torch.nn.Linear(64, n, bias=True) for n in (32, 16, 16)]
    for decode, prefill in (("int8/bf16", "bf16"), ("int4/bf16", "int4/fp32"), ("fp32", "bf16")):
        planned = [PlannedLinear(l, LinearPath.parse(decode), LinearPath.parse(prefill), torch.float32) for l in parts]
        x = torch.randn(20, 64)
        with torch.inference_mode():
            before = [torch.cat([p(x[:r]) for p in planned], dim=-1) for r in (1, 20)]
            fused = fuse(planned)
            torch.testing.assert_close(fused(x[:1]), before[0])
            torch.testing.assert_close(fused(x), before[1])
            # The originals still work on views of the fused weights.
            torch.testing.assert_close(torch.cat([p(x) for p in planned], dim=-1), before[1])
