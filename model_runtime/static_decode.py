"""A static-shape decode step that torch.compile can capture (gpt-fast's recipe).

The compiled step sees the same shapes every token: one input id, one position, and a KV buffer of fixed
length (transformers' StaticCache) with a mask over it; so inductor fuses the small ops on the CPU and CUDA
graphs replay the whole step on a GPU. The prompt still runs through the eager slab (prefix reuse works there);
before decoding, the positions the static buffer lacks are copied over from the slab.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import StaticCache

from repocomplete.model_runtime.kv_cache import SlabCache


class StaticDecoder:
    def __init__(self, model, max_len: int, device: torch.device, dtype: torch.dtype, compile: bool = True):
        self.model = model
        self.max_len = max_len
        text_config = model.config.get_text_config()
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.cache.early_initialization(
            batch_size=1, num_heads=text_config.num_key_value_heads, head_dim=head_dim, dtype=dtype, device=device
        )
        self.device = device
        self.tokens: list[int] = []  # what the static buffer holds, position by position
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs on a GPU
        self._step = (
            torch.compile(self._step_eager, mode=mode, dynamic=False, fullgraph=False) if compile else self._step_eager
        )

    def _step_eager(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, past_key_values=self.cache, cache_position=cache_position, use_cache=True)
        return out.logits[0, -1]

    def begin(self, slab: SlabCache) -> None:
        """Make the static buffer hold what the slab holds, copying only the positions that differ."""
        n = 0
        for a, b in zip(self.tokens, slab.tokens):
            if a != b:
                break
            n += 1
        length = slab.length
        if length >= self.max_len:
            raise ValueError(f"prompt of {length} tokens does not fit the static decode buffer of {self.max_len}")
        for static_layer, slab_layer in zip(self.cache.layers, slab.layers):
            static_layer.keys[:, :, n:length] = slab_layer.k_buf[:, :, n:length]
            static_layer.values[:, :, n:length] = slab_layer.v_buf[:, :, n:length]
            static_layer.cumulative_length.fill_(length)
        self.tokens = list(slab.tokens[:length])

    @property
    def full(self) -> bool:
        return len(self.tokens) + 1 >= self.max_len

    def step(self, token: int) -> torch.Tensor:
        pos = len(self.tokens)
        input_ids = torch.tensor([[token]], dtype=torch.long, device=self.device)
        cache_position = torch.tensor([pos], dtype=torch.long, device=self.device)
        logits = self._step(input_ids, cache_position)
        self.tokens.append(token)
        return logits.clone()
