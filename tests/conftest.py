"""Shared fixtures: the SmolLM2 tokenizer (offline, from the embedded GGUF) and tiny random-weight models."""

from __future__ import annotations

import os

# The Triton kernels (kernels/) run on CPU tensors in Triton's interpreter; it is read when a kernel is defined, that
# is when the engine first imports them, so before any test module imports the runtime.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from repocomplete.model_runtime.config import RuntimeConfig, default_cache_dir  # noqa: E402
from repocomplete.model_runtime.loading import convert_gguf, embedded_gguf_path, load_model, load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def smollm_dir():
    """The embedded model converted to a HF directory (once per machine; later runs find it in the cache)."""
    return convert_gguf(embedded_gguf_path(), default_cache_dir())


@pytest.fixture(scope="session")
def tokenizer(smollm_dir):
    return load_tokenizer(smollm_dir)


def make_tiny_model_dir(path, tokenizer, seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture
def tiny_config(tiny_model_dir, tmp_path):
    return RuntimeConfig(
        model=str(tiny_model_dir), cache_dir=tmp_path / "cache", device="cpu", dtype="float32", quantize="none"
    )


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir, tmp_path_factory):
    config = RuntimeConfig(
        model=str(tiny_model_dir), cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", quantize="none"
    )
    return load_model(config)
