"""What a prepared model leaves in float, and how much of its attention is quantized.

:func:`float_modules` lists every module with weights feeding a matmul/convolution, or with an
activation x activation matmul, that no active quantizer covers, and why; :func:`attention_summary`
counts the attention blocks (modules running an activation x activation matmul) and those whose
softmax output and matmul operands all have active quantization points. Norm layers (BatchNorm,
GroupNorm) and parameters used elementwise (biases, LayerScale, tokens, position tables) carry no
multiply-accumulates and are not listed: runtimes fold a BatchNorm into the convolution before it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitcompress.nn.attention import ATTN_POINTS, QuantAttention, QuantWindowAttention
from vitcompress.nn.generic import attention_quantized, is_attention
from vitcompress.nn.linear import QuantConv2d, QuantLinear

FLOAT_ATTR = "vitcompress_float_modules"  # set by prepare: the modules no quantized module covers
FLOAT_ATTENTION_ATTR = "vitcompress_float_attention"  # set by prepare: attention ops that cannot be wrapped


@dataclass(frozen=True)
class FloatModule:
    """A module left in float: its path (``""`` for the model itself), class name and why."""

    name: str
    type: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type, "why": self.why}


@dataclass(frozen=True)
class AttentionSummary:
    """Attention blocks of a prepared model.

    Attributes:
        attention_modules: modules that run an activation x activation matmul (attention blocks).
        quantized_attention: those whose softmax output (if any) and every matmul operand have an active point.
        modules: the attention modules' paths, in module order.
    """

    attention_modules: int
    quantized_attention: int
    modules: list[str]


def type_name(m: nn.Module) -> str:
    """The class name of the float module ``m`` is or quantizes (``Linear`` for a ``QuantLinear``)."""
    return next(c.__name__ for c in type(m).__mro__ if not c.__module__.startswith("vitcompress."))


def _inactive_attention(m: nn.Module) -> list[str]:
    """Points (or ops) of an attention module that do not quantize."""
    if isinstance(m, (QuantAttention, QuantWindowAttention)):
        return [p for p in ATTN_POINTS if not getattr(m, f"{p}_quantizer").active]
    if attention_quantized(m):
        return []
    off = [f"{op}.{n.removesuffix('_quantizer')}" for op in m.op_points for n, q in getattr(m, op).named_children()]
    off = [p for p in off if not _point_active(m, p)]
    return [*m.unquantized_ops, *off]


def _point_active(m: nn.Module, point: str) -> bool:
    op, operand = point.split(".")
    qz = getattr(m, op).point(operand)
    return qz is not None and qz.active


def float_modules(model: nn.Module) -> list[FloatModule]:
    """Every module of a prepared model that stays (partly) float, and why (see the module docstring):
    the modules no quantized layer covers (found by ``prepare``), linears/convolutions whose weight
    quantizer is inactive, and attention modules with an inactive point."""
    found = list(getattr(model, FLOAT_ATTR, ()))
    for path, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantConv2d)) and not m.weight_quantizer.active:
            found.append(FloatModule(path, type_name(m), "weight quantizer inactive (32 bit or disabled)"))
        elif isinstance(m, (QuantAttention, QuantWindowAttention)) or is_attention(m):
            off = _inactive_attention(m)
            if off:
                found.append(FloatModule(path, type_name(m), f"attention points not quantizing: {', '.join(off)}"))
    return found


def attention_summary(model: nn.Module) -> AttentionSummary:
    """How many attention blocks a prepared model has and how many are fully quantized."""
    names, quantized = [], 0
    for path, m in model.named_modules():
        if isinstance(m, (QuantAttention, QuantWindowAttention)) or is_attention(m):
            names.append(path)
            quantized += not _inactive_attention(m)
    unwrapped = list(getattr(model, FLOAT_ATTENTION_ATTR, ()))
    return AttentionSummary(len(names) + len(unwrapped), quantized, names + unwrapped)
