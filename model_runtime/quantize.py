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


class Int4Linear(nn.Module):
    """Group-wise asymmetric int4 weights (group of 32 along the input), the layout of GGUF's Q4_1.

    Decode multiplies the packed weights directly (`_weight_int4pack_mm_for_cpu`: half the bytes of int8);
    prefill de-quantizes the unpacked 4-bit values to bf16, where a GEMM beats the int4 kernel.
    """

    GROUP = 32

    def __init__(self, linear: nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        self.in_features, self.out_features = k, n
        groups = w.view(n, k // self.GROUP, self.GROUP)
        low = groups.amin(-1, keepdim=True)
        scale = ((groups.amax(-1, keepdim=True) - low) / 15).clamp(min=1e-8)
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.uint8).view(n, k)
        # The kernel computes w = (q - 8) * scale + zero.
        zero = low + 8 * scale
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2))
        self.register_buffer(
            "scales_zeros", torch.stack([scale.view(n, -1), zero.view(n, -1)], dim=-1).transpose(0, 1).contiguous().to(act_dtype)
        )
        self.register_buffer("q", q)  # for prefill
        self.register_buffer("scale", scale.to(act_dtype))
        self.register_buffer("low", low.to(act_dtype))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().to(act_dtype))

    @staticmethod
    def supported(linear: nn.Linear) -> bool:
        return linear.in_features % Int4Linear.GROUP == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(self.scale.dtype)
        if x2.shape[0] <= INT8_KERNEL_MAX_ROWS:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.contiguous(), self.packed, self.GROUP, self.scales_zeros)
        else:
            groups = self.q.view(self.out_features, -1, self.GROUP).to(x2.dtype)
            w = (groups * self.scale + self.low).view(self.out_features, self.in_features)
            y = nn.functional.linear(x2, w)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features)


def quantize_int8(model: nn.Module, act_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every nn.Linear of the model (lm_head included) in place; return how many were replaced."""
    return quantize(model, "int8", act_dtype)


def quantize(model: nn.Module, mode: str, act_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace the model's nn.Linear layers (lm_head included) in place with int8 or int4 ones; return how many.

    int4 falls back to int8 for a layer whose input size is not a multiple of the group.
    """
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                use_int4 = mode == "int4" and Int4Linear.supported(child)
                setattr(parent, name, (Int4Linear if use_int4 else Int8Linear)(child, act_dtype))
                replaced += 1
    return replaced
