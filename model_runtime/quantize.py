"""CPU linears with a weight form and an activation dtype per phase: decode rows and prefill rows may differ.

Decode (a few rows) is bound by reading the weights once per token, prefill (hundreds of rows) by GEMM throughput,
and which form wins depends on the CPU: on a 2-core AVX-512 machine with bf16 and VNNI, int8 weights through
`_weight_int8pack_mm` with bf16 activations decode 3x faster than fp32 and a bf16 GEMM prefills 5x faster than
fp32; with AVX2 only, a bf16 GEMM runs at a sixth of fp32's speed (and on an AMD Zen 3 the int8 kernel decoded
3x slower than fp32). So the form is chosen per machine by measurement (`model_runtime.cpu_path`), and a
`PlannedLinear` holds the decode form and, when prefill is faster in another one, a second form for prefill.

Weight forms: "fp32" and "bf16" (dense), "int8" (per output channel) and "int4" (groups of 32, GGUF Q4_1's
layout). A quantized form runs its kernel for decode rows and a de-quantized GEMM (in the phase's activation
dtype) for prefill rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# Up to this many rows a call is "decode" (one token, or a speculative draft being verified): the int kernels beat
# de-quantize + GEMM there (measured on the 2-core AVX-512 CPU).
DECODE_MAX_ROWS = 16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
WEIGHT_FORMS = ("fp32", "bf16", "int8", "int4")


@dataclass(frozen=True)
class LinearPath:
    """How a phase multiplies: the stored weight form and the activation dtype ("fp32"/"bf16")."""

    weights: str
    act: str

    def __post_init__(self):
        if self.weights not in WEIGHT_FORMS or self.act not in DTYPES:
            raise ValueError(f"bad linear path {self.weights}/{self.act}")

    @property
    def name(self) -> str:
        return self.weights if self.weights == self.act else f"{self.weights}/{self.act}"

    @property
    def act_dtype(self) -> torch.dtype:
        return DTYPES[self.act]

    @classmethod
    def parse(cls, name: str) -> "LinearPath":
        weights, _, act = name.partition("/")
        return cls(weights, act or weights)


# ---------------------------------------------------------------------------------------------------------------
# Weight forms: each multiplies a 2-D input as a decode call (`small`) or a prefill call.


class RowWeights:
    """A weight form whose tensors all have the output rows first, so that slicing rows (the views `fuse` hands
    back to the original modules) and concatenating forms (fused q/k/v) are the same for every form."""

    TENSORS: tuple[str, ...] = ()

    def _derive(self) -> None:
        """Recompute what is derived from the tensors (caches, the kernel's packed layout)."""

    def rows(self, start: int, end: int):
        out = object.__new__(type(self))
        for name in self.TENSORS:
            setattr(out, name, getattr(self, name)[start:end])
        out._derive()
        return out

    @classmethod
    def cat(cls, forms: list):
        out = object.__new__(cls)
        for name in cls.TENSORS:
            setattr(out, name, torch.cat([getattr(f, name) for f in forms]))
        out._derive()
        return out


class DenseWeights(RowWeights):
    TENSORS = ("weight",)

    def __init__(self, weight: torch.Tensor, dtype: torch.dtype):
        self.weight = weight.detach().to(dtype).contiguous()

    def matmul(self, x: torch.Tensor, act: torch.dtype, small: bool) -> torch.Tensor:
        w = self.weight if self.weight.dtype == act else self.weight.to(act)
        return nn.functional.linear(x.to(act), w)


class Int8Weights(RowWeights):
    """Per-output-channel symmetric int8: a quarter of fp32's bytes."""

    TENSORS = ("q", "scales")

    def __init__(self, weight: torch.Tensor):
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.q = torch.round(w / scales[:, None]).clamp(-128, 127).to(torch.int8)
        self.scales = scales
        self._derive()

    def _derive(self) -> None:
        self._scales_as: dict[torch.dtype, torch.Tensor] = {}  # the kernel wants scales in the activations' dtype

    def _scales(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._scales_as:
            self._scales_as[dtype] = self.scales.to(dtype)
        return self._scales_as[dtype]

    def matmul(self, x: torch.Tensor, act: torch.dtype, small: bool) -> torch.Tensor:
        x = x.to(act).contiguous()
        if small:
            return torch.ops.aten._weight_int8pack_mm(x, self.q, self._scales(act))
        return nn.functional.linear(x, self.q.to(act) * self._scales(act)[:, None])


class Int4Weights(RowWeights):
    """Group-wise asymmetric int4 (groups of 32 along the input): half of int8's bytes.

    Decode multiplies the packed weights directly (`_weight_int4pack_mm_for_cpu`); prefill de-quantizes the
    unpacked 4-bit values, where a GEMM beats the int4 kernel.
    """

    GROUP = 32
    TENSORS = ("q", "scale", "low")

    def __init__(self, weight: torch.Tensor):
        w = weight.detach().float()
        n, k = w.shape
        groups = w.view(n, k // self.GROUP, self.GROUP)
        low = groups.amin(-1, keepdim=True)
        scale = ((groups.amax(-1, keepdim=True) - low) / 15).clamp(min=1e-8)
        self.q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.uint8).view(n, k)
        self.scale, self.low = scale, low  # [n, k/32, 1], fp32
        self._derive()

    def _derive(self) -> None:
        # The packed layout is the kernel's own (not row-major): a slice or a concatenation is packed anew.
        n = self.q.shape[0]
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.q.to(torch.int32), 2)
        # The kernel computes w = (q - 8) * scale + zero.
        zero = self.low + 8 * self.scale
        self.scales_zeros = torch.stack([self.scale.view(n, -1), zero.view(n, -1)], dim=-1).transpose(0, 1).contiguous()
        self._as: dict[torch.dtype, tuple] = {}

    @staticmethod
    def supported(in_features: int, out_features: int) -> bool:
        # The packing kernel wants whole groups along the input and outputs in multiples of 16.
        return (in_features % Int4Weights.GROUP == 0 and out_features % 16 == 0
                and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"))

    def _cast(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if dtype not in self._as:
            self._as[dtype] = (self.scales_zeros.to(dtype), self.scale.to(dtype), self.low.to(dtype))
        return self._as[dtype]

    def matmul(self, x: torch.Tensor, act: torch.dtype, small: bool) -> torch.Tensor:
        x = x.to(act).contiguous()
        scales_zeros, scale, low = self._cast(act)
        if small:
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, self.GROUP, scales_zeros)
        n, k = self.q.shape
        w = (self.q.view(n, -1, self.GROUP).to(act) * scale + low).view(n, k)
        return nn.functional.linear(x, w)


def make_weights(form: str, weight: torch.Tensor):
    if form == "int8":
        return Int8Weights(weight)
    if form == "int4":
        return Int4Weights(weight)
    return DenseWeights(weight, DTYPES[form])


# ---------------------------------------------------------------------------------------------------------------
# The module.


class PlannedLinear(nn.Module):
    """A linear whose decode rows and prefill rows each run their own (weight form, activation dtype).

    The output comes back in `out_dtype`, the dtype of the model's residual stream.
    """

    def __init__(self, linear: nn.Linear | None, decode: LinearPath, prefill: LinearPath, out_dtype: torch.dtype):
        super().__init__()
        self.decode_path, self.prefill_path, self.out_dtype = decode, prefill, out_dtype
        if linear is None:  # built by `fuse`
            return
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.decode_weights = make_weights(decode.weights, weight)
        self.prefill_weights = (
            self.decode_weights if prefill.weights == decode.weights else make_weights(prefill.weights, weight)
        )
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] <= DECODE_MAX_ROWS:
            y = self.decode_weights.matmul(x2, self.decode_path.act_dtype, small=True)
        else:
            y = self.prefill_weights.matmul(x2, self.prefill_path.act_dtype, small=False)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(self.out_dtype).reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, decode={self.decode_path.name}, "
                f"prefill={self.prefill_path.name}")

    @staticmethod
    def fuse(linears: list["PlannedLinear"]) -> "PlannedLinear":
        """One module computing the concatenated outputs of several planned linears over the same input; the
        originals' dense and int8 weights become row views of the fused ones, so nothing is held twice."""
        first = linears[0]
        fused = PlannedLinear(None, first.decode_path, first.prefill_path, first.out_dtype)
        fused.in_features = first.in_features
        fused.out_features = sum(l.out_features for l in linears)
        fused.decode_weights = type(first.decode_weights).cat([l.decode_weights for l in linears])
        shared = first.prefill_weights is first.decode_weights
        fused.prefill_weights = (
            fused.decode_weights if shared else type(first.prefill_weights).cat([l.prefill_weights for l in linears])
        )
        fused.bias = None if first.bias is None else torch.cat([l.bias for l in linears])
        start = 0
        for l in linears:
            end = start + l.out_features
            # int4 slices would need re-packing: the original keeps its small copy; every other form is a view.
            if not isinstance(l.decode_weights, Int4Weights):
                l.decode_weights = fused.decode_weights.rows(start, end)
            if shared:
                l.prefill_weights = l.decode_weights
            elif not isinstance(l.prefill_weights, Int4Weights):
                l.prefill_weights = fused.prefill_weights.rows(start, end)
            start = end
        return fused


def plan_linears(model: nn.Module, decode: LinearPath, prefill: LinearPath, out_dtype: torch.dtype) -> int:
    """Replace the model's nn.Linear layers (lm_head included) in place with planned ones; return how many.

    int4 falls back to int8 for a layer the int4 kernel cannot take (sizes not multiples of its group)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                d, p = decode, prefill
                if not Int4Weights.supported(child.in_features, child.out_features):
                    d = LinearPath("int8", d.act) if d.weights == "int4" else d
                    p = LinearPath("int8", p.act) if p.weights == "int4" else p
                setattr(parent, name, PlannedLinear(child, d, p, out_dtype))
                replaced += 1
    return replaced


def quantize(model: nn.Module, mode: str, act_dtype: torch.dtype = torch.bfloat16) -> int:
    """The fixed int8/int4 plan of `--quantize int8|int4`: the same form and activation dtype in both phases."""
    path = LinearPath(mode, "bf16" if act_dtype == torch.bfloat16 else "fp32")
    return plan_linears(model, path, path, act_dtype)
