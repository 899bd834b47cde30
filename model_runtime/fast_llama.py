"""A gpt-fast-style forward for Llama-family models (Llama, SmolLM2, CodeLlama, DeepSeek-Coder, Qwen2.5-Coder).

Decoding a 135M model on two CPU cores spends as much time in transformers' Python (mask building, rotary
recomputation, kwargs plumbing, ~50 small ops a layer) as in the matmuls. This forward runs the same weights
with half the ops: fused QKV and gate/up projections, a precomputed rotary table and the grouped decode
attention. The transformers modules keep working: their weights become views into the fused tensors.
Other architectures use transformers' forward (`hf_forward`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from repocomplete.model_runtime.attention import causal_attention
from repocomplete.model_runtime.kv_cache import SlabCache
from repocomplete.model_runtime.quantize import PlannedLinear

# (input_ids [1, n], cache, all_logits=False) -> logits of the last position [vocab], or of every position [n, vocab]
Forward = Callable[..., torch.Tensor]
# (layer index, q [b, H, n, D], k [b, Hkv, n, D], v [b, Hkv, n, D]) -> attention output [b, n, H, D]: the new rows'
# attention over whatever K/V the caller keeps (it stores k and v itself). `FastLlama.run` calls one per layer.
Attend = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

SUPPORTED = ("llama", "qwen2")
_ROPE_TYPES = ("default", "linear", "llama3")  # static inv_freq; "dynamic" rescales with the length


def hf_forward(model) -> Forward:
    def forward(input_ids: torch.Tensor, cache: SlabCache, all_logits: bool = False) -> torch.Tensor:
        out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=0 if all_logits else 1)
        return out.logits[0] if all_logits else out.logits[0, -1]

    return forward


def supports(model) -> bool:
    config = model.config.get_text_config()
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}).get(
        "rope_type", "default"
    )
    return (
        config.model_type in SUPPORTED
        and rope in _ROPE_TYPES
        and not getattr(config, "use_sliding_window", False)
        and getattr(model.model, "rotary_emb", None) is not None
    )


def fuse(linears: list[nn.Module]) -> nn.Module:
    """One module computing the concatenated outputs of several linears over the same input.

    The originals' weights are re-pointed at row slices of the fused tensors, so nothing is held twice.
    """
    if all(isinstance(l, PlannedLinear) for l in linears):
        return PlannedLinear.fuse(linears)
    if not all(type(l) is nn.Linear for l in linears):
        raise TypeError(f"cannot fuse {[type(l).__name__ for l in linears]}")
    has_bias = linears[0].bias is not None
    fused = nn.Linear(linears[0].in_features, sum(l.out_features for l in linears), bias=has_bias, device="meta")
    fused.weight = nn.Parameter(torch.cat([l.weight for l in linears]), requires_grad=False)
    if has_bias:
        fused.bias = nn.Parameter(torch.cat([l.bias for l in linears]), requires_grad=False)
    start = 0
    for l in linears:
        end = start + l.out_features
        l.weight = nn.Parameter(fused.weight[start:end], requires_grad=False)
        if has_bias:
            l.bias = nn.Parameter(fused.bias[start:end], requires_grad=False)
        start = end
    return fused


class FastLlama:
    def __init__(self, model):
        config = model.config.get_text_config()
        self.model = model
        inner = model.model
        self.embed = inner.embed_tokens
        self.norm = inner.norm
        self.lm_head = model.lm_head
        self.n_heads = config.num_attention_heads
        self.n_kv = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim**-0.5
        rotary = inner.rotary_emb
        self.inv_freq = rotary.inv_freq.float()
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self._cos = self._sin = torch.empty(0)
        self.layers = []
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    fuse([attn.q_proj, attn.k_proj, attn.v_proj]),
                    attn.o_proj,
                    layer.post_attention_layernorm.weight,
                    fuse([mlp.gate_proj, mlp.up_proj]),
                    mlp.down_proj,
                )
            )
        self.q_size = self.n_heads * self.head_dim
        self.kv_size = self.n_kv * self.head_dim
        self.intermediate = config.intermediate_size

    def _rope(self, start: int, n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + n
        if self._cos.shape[0] < end:
            length = max(end, 2 * self._cos.shape[0], 1024)
            t = torch.arange(length, dtype=torch.float32, device=self.inv_freq.device)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            self._cos = (emb.cos() * self.rope_scaling).to(device)
            self._sin = (emb.sin() * self.rope_scaling).to(device)
        return self._cos[start:end].to(dtype), self._sin[start:end].to(dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin

    def __call__(self, input_ids: torch.Tensor, cache: SlabCache, all_logits: bool = False) -> torch.Tensor:
        start = cache.layers[0].length
        logits = self.run(input_ids, start, self.dense_attend(cache, start), all_logits)[0]
        return logits if all_logits else logits[-1]

    def run(self, input_ids: torch.Tensor, start: int, attend: Attend, all_logits: bool = False) -> torch.Tensor:
        """The forward of `input_ids` [b, n] at positions start..start+n-1, with attention (and the K/V it keeps)
        delegated to `attend`; logits [b, n, vocab] (all_logits) or [b, 1, vocab] (the last position)."""
        b, n = input_ids.shape
        x = self.embed(input_ids)
        cos, sin = self._rope(start, n, x.device, x.dtype)
        for i, (ln1, qkv, o_proj, ln2, gate_up, down) in enumerate(self.layers):
            h = torch.rms_norm(x, (x.shape[-1],), ln1, self.eps)
            q, k, v = qkv(h).split((self.q_size, self.kv_size, self.kv_size), dim=-1)
            q = self._rotate(q.view(b, n, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rotate(k.view(b, n, self.n_kv, self.head_dim).transpose(1, 2), cos, sin)
            v = v.view(b, n, self.n_kv, self.head_dim).transpose(1, 2)
            attn = attend(i, q, k, v).to(x.dtype)  # [b, n, H, D]
            x = x + o_proj(attn.reshape(b, n, self.q_size))
            h = torch.rms_norm(x, (x.shape[-1],), ln2, self.eps)
            gate, up = gate_up(h).split((self.intermediate, self.intermediate), dim=-1)
            x = x + down(nn.functional.silu(gate) * up)
        x = torch.rms_norm(x if all_logits else x[:, -1:], (x.shape[-1],), self.norm.weight, self.eps)
        return self.lm_head(x)

    def dense_attend(self, cache: SlabCache, start: int) -> Attend:
        """Attention over the slab: each layer appends its new K/V and attends to everything before (causal)."""

        def attend(i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = cache.layers[i].update(k, v)
            return causal_attention(q, keys, values, start, self.scale)

        return attend


def build_forward(model) -> tuple[Forward, str]:
    """The fastest forward this model supports, and its name."""
    if supports(model):
        return FastLlama(model), "fast-llama"
    return hf_forward(model), "transformers"
