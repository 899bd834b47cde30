"""Model loading: specs, device/dtype/quantization choice, GGUF conversion cache, LoRA adapters."""

from __future__ import annotations

import pytest
import torch

from repocomplete.model_runtime.config import RuntimeConfig, default_cache_dir
from repocomplete.model_runtime.kv_cache import SlabCache
from repocomplete.model_runtime.loading import (
    ModelLoadError,
    embedded_gguf_path,
    load_model,
    pick_device,
    pick_dtype,
    pick_quantize,
    resolve_model_dir,
    undertrained_tokens,
)


def test_automatic_device_dtype_and_quantization_on_this_cpu_machine():
    cpu = torch.device("cpu")
    assert pick_device(None) == (torch.device("cuda") if torch.cuda.is_available() else cpu)
    assert pick_dtype(None, cpu) == torch.float32
    assert pick_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert pick_dtype(None, cpu, "int8") == torch.bfloat16  # int8 weights multiply bf16 activations
    assert pick_dtype("float16", cpu) == torch.float16
    assert pick_quantize("auto", cpu) == "none"  # the measured plan decides after loading (test_cpu_path.py)
    assert pick_quantize("auto", torch.device("cuda")) == "none"
    assert pick_quantize("none", cpu) == "none"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: pick_dtype("int8", torch.device("cpu")), "bad dtype 'int8'"),
        (lambda: pick_dtype("nonsense", torch.device("cpu")), "bad dtype 'nonsense'"),
        (lambda: pick_device("tpu:0"), "bad device 'tpu:0'"),
    ],
)
def test_bad_device_or_dtype_is_a_load_error(call, message):
    with pytest.raises(ModelLoadError, match=message):
        call()


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        pick_device("cuda")


def test_default_and_gguf_path_resolve_to_the_same_converted_directory(smollm_dir):
    cache = default_cache_dir()
    default_dir, default_name = resolve_model_dir("default", cache)
    gguf_dir, gguf_name = resolve_model_dir(str(embedded_gguf_path()), cache)
    assert default_dir == gguf_dir == smollm_dir
    assert (default_dir / "model.safetensors").is_file() and (default_dir / "repocomplete-converted.json").is_file()
    assert default_name == "default (SmolLM2-135M-Instruct.Q4_1)" and gguf_name == "SmolLM2-135M-Instruct.Q4_1"


def test_processes_converting_at_once_convert_once_and_never_break_a_finished_conversion(tmp_path, monkeypatch):
    """Two test workers (or a server and a command) asked for the same GGUF at once: the second waited for the
    first's conversion, then removed it to put its own in place while the first was reading it (CI: "cannot load
    tokenizer"). Now one converts, the others wait and use it; a finished conversion stays as it is."""
    import threading
    import time

    from repocomplete.model_runtime import loading

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    calls = []

    def convert(source, folder):
        calls.append(folder)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one converts
        (folder / "tokenizer.json").write_text(str(len(calls)))

    monkeypatch.setattr(loading, "_convert_into", convert)
    out = []
    threads = [threading.Thread(target=lambda: out.append(loading.convert_gguf(gguf, tmp_path / "cache")))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(out)) == 1 and len(out) == 3
    target = out[0]
    assert (target / "tokenizer.json").read_text() == "1" and (target / "repocomplete-converted.json").is_file()
    assert [p.name for p in target.parent.iterdir() if not p.name.startswith(".")] == [target.name]  # no leftovers
    assert not [p for p in target.parent.iterdir() if p.name.startswith((".convert-", ".stale-"))]

    # A conversion finished by someone else while this one ran is kept; this one is dropped.
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text("mine")
    loading._install(other, target)
    assert (target / "tokenizer.json").read_text() == "1" and other.is_dir()
    # An unfinished leftover (no marker: a crash before the rename of an older version) is replaced.
    (target / "repocomplete-converted.json").unlink()
    loading._install(other, target)
    assert (target / "tokenizer.json").read_text() == "mine" and not other.exists()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".stale-")]


def test_overrides_reach_the_loaded_model(tiny_model_dir, tmp_path):
    loaded = load_model(
        RuntimeConfig(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", dtype="bfloat16", quantize="none")
    )
    assert loaded.dtype == torch.bfloat16 and loaded.model.dtype == torch.bfloat16
    assert loaded.device == torch.device("cpu") and loaded.name == tiny_model_dir.name
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def _make_adapter(tiny_model_dir, path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    torch.manual_seed(5)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at zero (a no-op adapter); make it do something
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(path)
    with torch.inference_mode():
        return peft_model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits[0, -1]


def test_lora_adapter_is_merged_at_load(tiny_model_dir, tmp_path):
    expected = _make_adapter(tiny_model_dir, tmp_path / "adapter")
    base_cfg = RuntimeConfig(model=str(tiny_model_dir), cache_dir=tmp_path, device="cpu", quantize="none")
    adapted = load_model(base_cfg.replace(adapter=str(tmp_path / "adapter")))
    base = load_model(base_cfg)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.inference_mode():
        got = adapted.forward(ids, SlabCache(2))
        plain = base.forward(ids, SlabCache(2))
    assert adapted.name == f"{tiny_model_dir.name}+adapter"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the adapter changed the model


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "has no adapter_config.json"),
        (lambda d: (d / "adapter_config.json").write_text("{not json") and d, "cannot load adapter"),
    ],
)
def test_bad_adapter_is_a_load_error(tiny_model_dir, tmp_path, make, message):
    (tmp_path / "adapter").mkdir()
    adapter = make(tmp_path / "adapter")
    with pytest.raises(ModelLoadError, match=message):
        load_model(RuntimeConfig(model=str(tiny_model_dir), adapter=str(adapter), cache_dir=tmp_path, quantize="none"))


def test_undertrained_tokens_are_the_rows_that_point_where_the_unused_specials_point(tiny_model_dir, tokenizer):
    """Magikarp's test on the output embedding: the unused special tokens share one direction; the ordinary tokens
    that share it too (untrained, like SmolLM2's `PlaneProtection`) come with them; a trained special does not."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert undertrained_tokens(model, tokenizer) == ()  # random rows: no shared direction
    weight = model.get_output_embeddings().weight
    with torch.no_grad():
        direction = torch.randn(weight.shape[1])
        for i in [3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1000, 2000]:
            weight[i] = direction * (1 + i / 10_000) + 0.01 * torch.randn(weight.shape[1])
    assert undertrained_tokens(model, tokenizer) == (3, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 1000, 2000)


def test_the_embedded_model_s_untrained_tokens_stop_a_completion(smollm_dir, tmp_path):
    loaded = load_model(RuntimeConfig(model=str(smollm_dir), cache_dir=tmp_path, quantize="none", adapter="none"))
    texts = {loaded.tokenizer.decode([i]) for i in loaded.undertrained}
    assert {"<empty_output>", "<gh_stars>", "\x00", "PlaneProtection", " pvproperty"} <= texts
    assert not texts & {"<filename>", "<|endoftext|>", " return", "("}  # trained ones stay out
    from repocomplete.model_runtime.engine import Engine

    assert set(loaded.undertrained) <= Engine(loaded, RuntimeConfig(model=str(smollm_dir))).stop_ids
