"""Weight-only int8 linears (gpt-fast's WeightOnlyInt8Linear) for CPU decode speed.

Decode is bound by reading the weights once per token. Per-output-channel int8 weights are a quarter of fp32,
and `_weight_int8pack_mm` (AVX-512 VNNI on this CPU) multiplies them with bf16 activations directly. For many
rows at once (prefill) a de-quantized bf16 matmul is faster, so the layer switches on the row count.
"""

from __future__ import annotations

import torch
from torch import nn

# Up to this many rows, the int8 kernel beats de-quantize + bf16 GEMM (measured on the 2-core AVX-512 CPU).
INT8_KERNEL_MAX_ROWS = 16


class Int8Linear(nn.Module):
    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(act_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(act_dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.scales.dtype)
        if x2.shape[0] <= INT8_KERNEL_MAX_ROWS:
            y = torch.ops.aten._weight_int8pack_mm(x2.contiguous(), self.weight, self.scales)
        else:
            y = nn.functional.linear(x2, self.weight.to(x2.dtype) * self.scales[:, None])
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every nn.Linear of the model (lm_head included) in place; return how many were replaced."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child, act_dtype))
                replaced += 1
    return replaced
