"""An export-only copy of a quantized model, made of QDQ ops ONNX Runtime can run as integer kernels.

Each quantized module of :mod:`vitcompress.nn` becomes an ``Export*`` module that computes the same
function with ops the ONNX exporter writes as ``QuantizeLinear``/``DequantizeLinear``:

- linear/conv weights: int8 codes (the quantizer's own grid values; 2..8-bit codes fit in int8
  exactly) with one float scale per output channel, as ``DequantizeLinear`` on an initializer. A
  linear weight is stored transposed, ``(in, out)``, so ``DequantizeLinear`` feeds ``MatMul``
  directly (a ``Transpose`` in between hides the pattern from ORT's QDQ fusion).
- bias correction (Banner, Nahshan, Soudry, NeurIPS 2019, arXiv:1810.05723) is per output channel
  an affine map of the de-quantized weight, ``Ŵ' = r·Ŵ + d`` with ``r = σ(W)/(σ(Ŵ)+eps)``,
  ``d = μ(W) − r·μ(Ŵ)``: ``r`` goes into the scale (same codes) and ``d`` becomes ``d ⊗ Σ_k x_k``
  added to the output, exact in real arithmetic.
- activations: ``QuantizeLinear → DequantizeLinear`` with the quantizer's scale and zero point
  (uint8 for asymmetric, int8 for symmetric grids; PTF as one scale per channel of the last axis).
- attention: ``Q(q) @ Q(kᵀ)`` with the attention scale folded into q's ``DequantizeLinear`` scale
  (the fake-quant model computes ``(Q(q)·scale) @ Q(k)ᵀ``: the same values up to float rounding), so
  both attention matmuls see ``DequantizeLinear`` inputs and no ``Mul`` runs on the scores.

Points ONNX Runtime cannot run at their bit width are handled by ``policy`` and reported one by one
(:class:`PointExport`): ``promote`` maps them to 8 bit (activations of 2..7 bits keep their range on
the 8-bit grid; log2 probabilities become uniform uint8 on [0, 1]); ``float`` leaves them in float;
``error`` raises. 16-bit and dynamic per-token points always stay float (reported).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.errors import ConfigError, StateError, UnsupportedModelError
from vitcompress.export.qdq import QDQ, DequantizeWeight
from vitcompress.nn.attention import QuantAttention, QuantWindowAttention
from vitcompress.nn.linear import QuantConv2d, QuantLayerNorm, QuantLinear
from vitcompress.quant import Quantizer
from vitcompress.quant.quantizer import Log2Quantizer, PTFQuantizer, UniformQuantizer

log = logging.getLogger(__name__)

POLICIES = ("promote", "float", "error")
BC_EPS = 1e-8  # the eps of vitcompress.quant.correct_bias


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


def activation_qdq(
    qz: Quantizer, policy: str, points: _Points, axis_map: int | None = None, factor: float = 1.0
) -> nn.Module:
    """The export module of an activation quantizer: a :class:`QDQ`, or ``nn.Identity`` (float).

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
    if isinstance(qz, Log2Quantizer):
        if not _unsupported(qz, "log2 probabilities", policy, points):
            return nn.Identity()
        points.add(qz, "uint8", "log2 promoted to uniform uint8 on [0, 1]", exact=False)
        return QDQ(torch.tensor(1.0 / 255.0), torch.tensor(0.0), signed=False)
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


# ---- weights -------------------------------------------------------------------------------------
def weight_codes(qz: UniformQuantizer, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer codes (int8-ranged, as float), per-output-channel scale and zero point of ``w``.

    The codes are exactly those of ``fake_quant``: ``clamp(round(w/s) + z, qmin, qmax)``.
    """
    with torch.no_grad():
        n = w.shape[0]
        scale = qz._broadcast(qz.scale, w)
        zero = qz._broadcast(qz.zero_point, w)
        qmin, qmax = qz.qbounds(w)
        codes = torch.clamp(torch.round((w / scale).detach()) + zero, qmin, qmax)
        per_channel = lambda t: t.reshape(-1).expand(n) if t.numel() == 1 else t.reshape(n)  # noqa: E731
        return codes, per_channel(scale).clone(), per_channel(zero).clone()


def _export_weight(m: QuantLinear | QuantConv2d, points: _Points, transpose: bool):
    """``(DequantizeWeight | None, offset d | None, float weight | None)`` for a linear/conv layer."""
    qz, w = m.weight_quantizer, m.weight.detach()
    bits = int(qz.group_bits.max()) if qz.spec.granularity == "group" else qz.spec.bits
    if not qz.active or bits > 8:
        if qz.active:  # float weights carry the fake-quant values: same numerics, no integer kernel
            points.add(qz, "float", f"{bits}-bit weights have no int8 kernel: kept float (fake-quant values)")
        return None, None, m.quantized_weight().detach()
    if not isinstance(qz, UniformQuantizer) or qz.spec.granularity == "token":
        raise ConfigError(
            f"quantizer {qz.name}: weights must be uniform per tensor/channel/group to export, "
            f"got scheme {qz.spec.scheme!r}, granularity {qz.spec.granularity!r}"
        )
    codes, scale, zero = weight_codes(qz, w)
    offset = None
    if m.bias_correction:
        w_hat = (codes - zero.reshape(-1, *[1] * (w.dim() - 1))) * scale.reshape(-1, *[1] * (w.dim() - 1))
        dims = list(range(1, w.dim()))
        r = w.std(dim=dims, unbiased=False) / (w_hat.std(dim=dims, unbiased=False) + BC_EPS)
        offset = w.mean(dim=dims) - r * w_hat.mean(dim=dims)
        scale = scale * r
    if not qz.symmetric:  # asymmetric weight grid [0, 2^b − 1]: shift codes and zero point into int8
        codes, zero = codes - 128, zero - 128
    signed_codes = codes.to(torch.int8)
    if transpose:
        signed_codes = signed_codes.t().contiguous()  # (in, out): DequantizeLinear feeds MatMul
    dq = DequantizeWeight(signed_codes, scale, axis=1 if transpose else 0)
    dq.zero_point.copy_(zero.to(torch.int8))
    points.add(qz, "int8", "" if qz.spec.bits == 8 else f"{qz.spec.bits}-bit codes stored in int8")
    return dq, offset, None


class ExportLinear(nn.Module):
    """``y = Q(x) @ DQ(Wᵀ) (+ d ⊗ Σx) + b``.

    Two details keep ORT's QDQ fusion (``DQ → MatMul → Add`` to ``MatMulIntegerToFloat``) working:
    a 2-D input (the head) runs as (B, 1, C), since ORT first fuses a 2-D ``MatMul + Add`` into a
    float ``Gemm``; a layer without bias gets a zero bias, since a bare ``MatMul`` whose output
    feeds several nodes (Swin's patch merging) is left float.
    """

    def __init__(self, m: QuantLinear, policy: str, points: _Points):
        super().__init__()
        self.input_qdq = activation_qdq(m.input_quantizer, policy, points)
        self.weight_dq, offset, w_float = _export_weight(m, points, transpose=True)
        self.register_buffer("w_float", None if w_float is None else w_float.t().contiguous())
        self.register_buffer("offset", offset)
        bias = torch.zeros(m.out_features) if m.bias is None else m.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.dim() == 2
        x = self.input_qdq(x.unsqueeze(1) if flat else x)  # (B, 1, C): see the class docstring
        y = x @ (self.w_float if self.weight_dq is None else self.weight_dq())
        if self.offset is not None:
            y = y + x.sum(-1, keepdim=True) * self.offset
        y = y + self.bias
        return y.squeeze(1) if flat else y


class ExportConv2d(nn.Module):
    """``conv(Q(x), DQ(W)) (+ d ⊗ window sums of x) + b`` (the patch embedding)."""

    def __init__(self, m: QuantConv2d, policy: str, points: _Points):
        super().__init__()
        if m.padding_mode != "zeros":
            raise ConfigError(f"conv {m.weight_quantizer.name}: padding_mode must be 'zeros', got {m.padding_mode!r}")
        self.input_qdq = activation_qdq(m.input_quantizer, policy, points)
        self.weight_dq, offset, w_float = _export_weight(m, points, transpose=False)
        self.register_buffer("w_float", w_float)
        self.conv_args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
        if offset is not None and m.groups != 1:
            raise ConfigError(f"conv {m.weight_quantizer.name}: bias correction export needs groups == 1")
        self.register_buffer("offset", None if offset is None else offset.reshape(1, -1, 1, 1))
        self.register_buffer("ones", None if offset is None else torch.ones(1, *m.weight.shape[1:]))
        self.register_buffer("bias", None if m.bias is None else m.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_qdq(x)
        w = self.w_float if self.weight_dq is None else self.weight_dq()
        y = F.conv2d(x, w, self.bias, **self.conv_args)
        if self.offset is not None:
            y = y + F.conv2d(x, self.ones, None, **self.conv_args) * self.offset  # (B, 1, H', W') window sums
        return y


class ExportLayerNorm(nn.Module):
    """LayerNorm of ``Q(x)``: a float op after a QDQ pair (no integer LayerNorm kernel exists)."""

    def __init__(self, m: QuantLayerNorm, policy: str, points: _Points):
        super().__init__()
        self.input_qdq = activation_qdq(m.input_quantizer, policy, points)
        self.normalized_shape, self.eps = m.normalized_shape, m.eps
        self.weight = None if m.weight is None else nn.Parameter(m.weight.detach().clone(), requires_grad=False)
        self.bias = None if m.bias is None else nn.Parameter(m.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(self.input_qdq(x), self.normalized_shape, self.weight, self.bias, self.eps)


class _ExportAttnBase(nn.Module):
    def _init_quant(self, m: nn.Module, policy: str, points: _Points) -> None:
        self.num_heads, self.scale = m.num_heads, m.scale
        self.qkv, self.proj = m.qkv, m.proj  # already converted (children first)
        # the attention scale 1/√d is folded into q's de-quantization scale where q is quantized
        self.q_qdq = activation_qdq(m.q_quantizer, policy, points, factor=float(m.scale))
        self.scale_folded = isinstance(self.q_qdq, QDQ)
        # k is quantized after its transpose (so DequantizeLinear feeds MatMul): channels move to -2
        self.k_qdq = activation_qdq(m.k_quantizer, policy, points, axis_map=-2)
        self.v_qdq = activation_qdq(m.v_quantizer, policy, points)
        self.probs_qdq = activation_qdq(m.probs_quantizer, policy, points)

    def _scores(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        scores = self.q_qdq(q) @ self.k_qdq(k.transpose(-2, -1))  # (B, H, N, N)
        return scores if self.scale_folded else scores * self.scale

    def _mix(self, scores: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.probs_qdq(scores.softmax(dim=-1)) @ self.v_qdq(v)  # (B, H, N, Dh)


class ExportAttention(_ExportAttnBase):
    """timm ``Attention`` (via :class:`QuantAttention`) with explicit, QDQ-fed matmuls."""

    def __init__(self, m: QuantAttention, policy: str, points: _Points):
        super().__init__()
        if getattr(m, "gate", None) is not None:
            raise ConfigError(f"attention {m.q_quantizer.name.rsplit('.', 1)[0]}: gated attention is not exportable")
        self._init_quant(m, policy, points)
        self.head_dim, self.attn_dim = m.head_dim, m.attn_dim
        self.q_norm, self.k_norm, self.norm = m.q_norm, m.k_norm, m.norm

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ConfigError("export: attention masks (attn_mask, is_causal) are not supported")
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        x = self._mix(self._scores(self.q_norm(q), self.k_norm(k)), v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)  # (B, N, H*Dh)
        return self.proj(self.norm(x))


class ExportWindowAttention(_ExportAttnBase):
    """Swin ``WindowAttention`` with explicit matmuls; relative position bias and shift mask are added
    to the scores before the softmax (the mask broadcast over the batch, so the batch stays dynamic)."""

    def __init__(self, m: QuantWindowAttention, policy: str, points: _Points):
        super().__init__()
        self._init_quant(m, policy, points)
        with torch.no_grad():
            self.register_buffer("rel_pos_bias", m._get_rel_pos_bias().detach().clone())  # (1, H, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape  # B_ = batch * windows, N = window area
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B_, H, N, Dh)
        scores = self._scores(q, k) + self.rel_pos_bias
        if mask is not None:
            num_win = mask.shape[0]
            scores = scores.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, N, N)
        x = self._mix(scores, v).transpose(1, 2).reshape(B_, N, -1)  # (B_, N, H*Dh)
        return self.proj(x)


_EXPORTERS = {
    QuantLinear: ExportLinear,
    QuantConv2d: ExportConv2d,
    QuantLayerNorm: ExportLayerNorm,
    QuantAttention: ExportAttention,
    QuantWindowAttention: ExportWindowAttention,
}


def _replace(module: nn.Module, policy: str, points: _Points) -> None:
    for name, child in list(module.named_children()):
        _replace(child, policy, points)  # children first: attention wraps its converted qkv / proj
        exporter = _EXPORTERS.get(type(child))
        if exporter is not None:
            setattr(module, name, exporter(child, policy, points))


def to_export_model(model: nn.Module, policy: str = "promote") -> tuple[nn.Module, list[PointExport]]:
    """A copy of quantized ``model`` made of QDQ ops (see the module docstring), and the point report.

    Args:
        model: a model quantized by :func:`vitcompress.quantize.quantize_` (or ``restore``).
        policy: for points ONNX Runtime cannot run at their bits: ``promote``, ``float`` or ``error``.

    Raises:
        ConfigError: ``policy`` not allowed, or (``policy="error"``) a point needs promotion.
        StateError: a quantizer is not calibrated.
    """
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    for qz in model.modules():
        if isinstance(qz, Quantizer) and qz.active and not qz.is_calibrated:
            raise StateError(f"quantizer {qz.name} is not calibrated: run quantize_ before exporting")
    out = copy.deepcopy(model).eval()
    points = _Points()
    with torch.no_grad():
        _replace(out, policy, points)
    left = [m.name for m in out.modules() if isinstance(m, Quantizer)]
    if left:
        raise ConfigError(f"export: quantizers outside the known layers cannot be exported: {left[:4]}")
    for p in out.parameters():
        p.requires_grad_(False)
    return out, list(points)
