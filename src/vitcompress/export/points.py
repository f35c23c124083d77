"""How each activation quantization point of a quantized model is exported: a QDQ pair, leading tokens on
scales of their own, a bit width ONNX Runtime cannot run (``policy``: promote to 8 bit, keep float, or fail),
and the per-point record (:class:`PointExport`) the export report lists."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.export.qdq import QDQ
from vitcompress.quant import Quantizer
from vitcompress.quant.logsqrt2 import LogSqrt2Quantizer
from vitcompress.quant.quantizer import Log2Quantizer, PTFQuantizer, UniformQuantizer

log = logging.getLogger(__name__)

POLICIES = ("promote", "float", "error")


@dataclass(frozen=True)
class PointExport:
    """How one quantization point was exported.

    Attributes:
        name: the point (``blocks.0.attn.qkv.weight``).
        bits: its bit width in the recipe.
        scheme: its scheme in the recipe.
        exported_as: ``int8`` / ``uint8`` (integer QDQ), or ``float`` (no QDQ).
        exact: whether the exported point computes the recipe's values exactly (False: promoted or
            kept float, so the ONNX model differs from the fake-quant model there).
        note: how it was mapped (promotion, kept float, PTF as per-channel QDQ), or "".
    """

    name: str
    bits: int
    scheme: str
    exported_as: str
    exact: bool = True
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class _Points(list):
    def add(self, qz: Quantizer, exported_as: str, note: str = "", exact: bool = True) -> None:
        self.append(PointExport(qz.name, qz.spec.bits, qz.spec.scheme, exported_as, exact, note))


# ---- activations ---------------------------------------------------------------------------------
def _promoted_8bit(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 scale / zero point covering ``[lo, hi]`` (which contains 0)."""
    scale = ((hi - lo) / 255.0).clamp_min(1e-8)
    return scale, torch.clamp(torch.round(-lo / scale), 0, 255)


def _unsupported(qz: Quantizer, why: str, policy: str, points: _Points) -> bool:
    """Handle a point without an 8-bit ONNX equivalent: True if the caller should promote it."""
    if policy == "error":
        raise ConfigError(
            f"quantizer {qz.name}: {why} have no ONNX Runtime integer kernel; set policy to "
            f"'promote' (8 bit) or 'float' (policy must be one of {list(POLICIES)})"
        )
    if policy == "float":
        points.add(qz, "float", f"{why}: kept float", exact=False)
        return False
    return True


class TokensApart(nn.Module):
    """Leading tokens on scales of their own (``prefix_tokens``): one per-tensor QDQ per leading token of a
    (B, N, C) input, the shared QDQ on the others; other inputs: the shared QDQ. (Per-tensor, not one QDQ on
    axis 1: OpenVINO's ONNX reader needs a static rank for a per-axis DequantizeLinear, which a Swin block's
    reshaped tokens do not carry through the graph.)"""

    def __init__(self, lead: list[nn.Module], rest: nn.Module):
        super().__init__()
        self.lead, self.rest, self.p = nn.ModuleList(lead), rest, len(lead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            return self.rest(x)
        parts = [qdq(x[:, i : i + 1]) for i, qdq in enumerate(self.lead)]
        return torch.cat([*parts, self.rest(x[:, self.p :])], dim=1)  # (B, N, C)


def activation_qdq(
    qz: Quantizer, policy: str, points: _Points, axis_map: int | None = None, factor: float = 1.0
) -> nn.Module:
    """The export module of an activation quantizer: a :class:`QDQ` (:class:`TokensApart` when leading
    tokens have scales of their own), or ``nn.Identity`` (float); arguments as :func:`shared_qdq`."""
    out = shared_qdq(qz, policy, points, axis_map, factor)
    p = getattr(qz, "prefix_count", 0)
    if not p or isinstance(out, nn.Identity):
        return out
    signed = isinstance(qz, UniformQuantizer) and qz.symmetric  # PTF grids are unsigned
    lead = [
        _uniform_qdq(qz, qz.token_scale[i], qz.token_zero[i], signed, None, qz.spec.bits, policy, _Points(), "")
        for i in range(p)
    ]
    return TokensApart(lead, out)


def shared_qdq(
    qz: Quantizer, policy: str, points: _Points, axis_map: int | None = None, factor: float = 1.0
) -> nn.Module:
    """The export module of an activation quantizer's shared scale: a :class:`QDQ`, or ``nn.Identity``.

    Args:
        qz: the calibrated quantizer.
        policy: what to do with bit widths / schemes ONNX Runtime cannot run (see ``POLICIES``).
        points: receives one :class:`PointExport`.
        axis_map: channel axis of the exported tensor, if it differs from ``qz.channel_axis``
            (k is quantized after its transpose).
        factor: constant folded into the de-quantization scale (see :class:`QDQ`); uniform only.
    """
    if not qz.active:
        return nn.Identity()
    spec = qz.spec
    if spec.bits > 8:
        points.add(qz, "float", f"{spec.bits}-bit activations have no integer kernel: kept float", exact=False)
        return nn.Identity()
    if isinstance(qz, (Log2Quantizer, LogSqrt2Quantizer)):
        if not _unsupported(qz, f"{spec.scheme} probabilities", policy, points):
            return nn.Identity()
        top = getattr(qz, "scale", torch.tensor(1.0)).detach().float()  # largest level: 1 (log2), s (log√2)
        points.add(qz, "uint8", f"{spec.scheme} promoted to uniform uint8 on [0, {float(top):.4g}]", exact=False)
        return QDQ(top / 255.0, torch.tensor(0.0), signed=False)
    if isinstance(qz, PTFQuantizer):
        scale = qz.scale * torch.exp2(qz.alpha.float())  # (C,): s·2^α_c, shared zero point
        zero = qz.zero_point.expand_as(scale)
        return _uniform_qdq(qz, scale, zero, False, -1, spec.bits, policy, points, "PTF as per-channel QDQ")
    if not isinstance(qz, UniformQuantizer):
        raise UnsupportedModelError(
            f"quantizer {qz.name}: {type(qz).__name__} has no ONNX export (uniform, log2 and PTF quantizers do)"
        )
    if spec.granularity == "token":
        points.add(qz, "float", "dynamic per-token ranges have no static scale: kept float", exact=False)
        return nn.Identity()
    if spec.granularity == "group":
        raise ConfigError(f"quantizer {qz.name}: granularity 'group' is exported for weights only")
    scale, zero = qz.scale, qz.zero_point
    axis = None if scale.dim() == 0 else (qz.channel_axis if axis_map is None else axis_map)
    return _uniform_qdq(qz, scale, zero, qz.symmetric, axis, spec.bits, policy, points, "", factor)


def _uniform_qdq(
    qz: Quantizer,
    scale: torch.Tensor,
    zero: torch.Tensor,
    signed: bool,
    axis: int | None,
    bits: int,
    policy: str,
    points: _Points,
    note: str,
    factor: float = 1.0,
) -> nn.Module:
    if bits == 8:
        points.add(qz, "int8" if signed else "uint8", note)
        return QDQ(scale, zero, signed, axis, factor)
    if not _unsupported(qz, f"{bits}-bit activations", policy, points):
        return nn.Identity()
    qmin, qmax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    lo, hi = (qmin - zero) * scale, (qmax - zero) * scale
    s8, z8 = _promoted_8bit(lo, hi)
    points.add(qz, "uint8", "; ".join(filter(None, [note, f"{bits}-bit range promoted to 8 bit"])), exact=False)
    return QDQ(s8, z8, False, axis, factor)
