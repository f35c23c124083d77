"""An export-only copy of a quantized model, made of QDQ ops ONNX Runtime and OpenVINO run as integer kernels.

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
  both attention matmuls see ``DequantizeLinear`` inputs and no ``Mul`` runs on the scores. By
  default (:class:`Layout`) the matmul operands are de-quantized without their zero points and the
  zero points' terms are added after the matmuls (OpenVINO runs a matmul of two activations on
  integer kernels only then), and q, k, v are quantized where the qkv linear writes them, so the
  transposes to heads move 8-bit codes.

Points ONNX Runtime cannot run at their bit width are handled by ``policy`` and reported one by one
(:class:`PointExport`): ``promote`` maps them to 8 bit (activations of 2..7 bits keep their range on
the 8-bit grid; log2 probabilities become uniform uint8 on [0, 1]); ``float`` leaves them in float;
``error`` raises. 16-bit and dynamic per-token points always stay float (reported).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.errors import ConfigError, StateError
from vitcompress.export.points import (  # noqa: F401  (PointExport, POLICIES: public here)
    POLICIES,
    PointExport,
    TokensApart,
    _Points,
    _uniform_qdq,
    _unsupported,
    activation_qdq,
    shared_qdq,
)
from vitcompress.export.qdq import QDQ, DequantizeWeight, QDQMove
from vitcompress.nn.attention import QuantAttention, QuantWindowAttention
from vitcompress.nn.generic import GenericQuantOps
from vitcompress.nn.linear import QuantConv2d, QuantLayerNorm, QuantLinear
from vitcompress.quant import Quantizer
from vitcompress.quant.quantizer import UniformQuantizer

log = logging.getLogger(__name__)

LAYOUT_RUNTIMES = ("ort", "openvino", "all")
BC_EPS = 1e-8  # the eps of vitcompress.quant.correct_bias


@dataclass(frozen=True)
class Layout:
    """Where the export places its ops; each choice keeps the numbers and changes what a runtime fuses.

    Attributes:
        zero_point_free: attention matmul operands without zero point (q and the probabilities as
            uint8, k and v as int8, each zero point's term subtracted after the matmul): OpenVINO
            runs a matmul of two activations on integer kernels only then (see ``docs/deploy.md``).
        integer_transposes: q, k and v from three slices of the qkv weight, each quantized before its
            transpose (``QuantizeLinear → DequantizeLinear → Transpose → MatMul``: the runtimes move
            the 8-bit codes), and the attention output quantized for ``proj`` before its transpose
            (``QuantizeLinear → Transpose → Reshape → DequantizeLinear``); per-tensor points only.
    """

    zero_point_free: bool = True
    integer_transposes: bool = True

    @classmethod
    def for_runtime(cls, runtime: str = "all") -> Layout:
        """The layout measured fastest for ``runtime`` (``docs/deploy.md``, ablation): ``all`` and
        ``openvino``: every choice on (both runtimes run it fully INT8); ``ort``: q, k, v keep their
        zero points (ONNX Runtime's integer matmuls take them; OpenVINO would then run the attention
        matmuls in float)."""
        if runtime not in LAYOUT_RUNTIMES:
            raise ConfigError(f"runtime must be one of {list(LAYOUT_RUNTIMES)}, got {runtime!r}")
        return cls(zero_point_free=False) if runtime == "ort" else cls()


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

    def functional_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """``F.linear(x, weight, bias)`` as an attention module calls it on this layer's weight (BEiT's qkv)."""
        y = self(x)
        return y if bias is None else y + bias


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

    @property
    def weight(self) -> torch.Tensor:
        """The de-quantized weight (Hugging Face's patch embedding reads ``projection.weight.dtype``)."""
        return self.w_float if self.weight_dq is None else self.weight_dq()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_qdq(x)
        y = F.conv2d(x, self.weight, self.bias, **self.conv_args)
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


def zero_point_free(qdq: nn.Module, signed: bool) -> nn.Module:
    """A per-tensor :class:`QDQ` re-expressed with a ``DequantizeLinear`` without zero point.

    The codes are the same (shifted by 128 when ``signed`` asks an unsigned grid for int8: an
    asymmetric uint8 grid with zero point ``z`` is the int8 grid with zero point ``z − 128``); the
    output is ``QDQ.offset`` above the quantized value, which the attention subtracts after its
    matmul. Anything else (identity, per-channel) is returned unchanged.
    """
    if not isinstance(qdq, QDQ) or qdq.axis is not None:
        return qdq
    unsigned = qdq.qmin == 0
    zero = qdq.zero_point.float() - (128.0 if signed and unsigned else 0.0)
    as_signed = signed or not unsigned
    if float(zero) == 0.0 and as_signed == (not unsigned):
        return qdq  # already zero-point free, in the asked type
    return QDQ(qdq.scale, zero, as_signed, None, qdq.factor, dq_zero=float(zero) == 0.0)


def _offset(qdq: nn.Module) -> float:
    """What a zero-point-free per-tensor :class:`QDQ` adds to the quantized value (0 for the others)."""
    return float(qdq.offset) if isinstance(qdq, QDQ) and qdq.dq_zero_point is not None else 0.0


def _per_tensor(m: nn.Module) -> bool:
    return isinstance(m, nn.Identity) or (isinstance(m, QDQ) and m.axis is None)


class ExportLinearPart(nn.Module):
    """Output columns ``[start, stop)`` of an :class:`ExportLinear`, on an input quantized by the caller."""

    def __init__(self, linear: ExportLinear, start: int, stop: int):
        super().__init__()
        dq = linear.weight_dq
        self.weight_dq = None
        if dq is not None:
            self.weight_dq = DequantizeWeight(dq.codes[:, start:stop].contiguous(), dq.scale[start:stop], axis=1)
            self.weight_dq.zero_point.copy_(dq.zero_point[start:stop])
        w_float = linear.w_float
        self.register_buffer("w_float", None if w_float is None else w_float[:, start:stop].contiguous())
        offset = linear.offset
        self.register_buffer("offset", None if offset is None else offset[start:stop].clone())
        self.register_buffer("bias", linear.bias[start:stop].clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ (self.w_float if self.weight_dq is None else self.weight_dq())
        if self.offset is not None:
            y = y + x.sum(-1, keepdim=True) * self.offset
        return y + self.bias


class _ExportAttnBase(nn.Module):
    def _init_quant(self, m: nn.Module, policy: str, points: _Points, layout: Layout) -> None:
        self.num_heads, self.scale = m.num_heads, m.scale
        self.qkv, self.proj = m.qkv, m.proj  # already converted (children first)
        # the attention scale 1/√d is folded into q's de-quantization scale where q is quantized
        self.q_qdq = activation_qdq(m.q_quantizer, policy, points, factor=float(m.scale))
        self.scale_folded = isinstance(self.q_qdq, QDQ)
        # k is quantized after its transpose (so DequantizeLinear feeds MatMul): channels move to -2
        self.k_qdq = activation_qdq(m.k_quantizer, policy, points, axis_map=-2)
        self.v_qdq = activation_qdq(m.v_quantizer, policy, points)
        self.probs_qdq = activation_qdq(m.probs_quantizer, policy, points)
        if layout.zero_point_free:  # integer matmuls need operands without zero point in OpenVINO (right one int8)
            self.q_qdq, self.probs_qdq = zero_point_free(self.q_qdq, False), zero_point_free(self.probs_qdq, False)
            self.k_qdq, self.v_qdq = zero_point_free(self.k_qdq, True), zero_point_free(self.v_qdq, True)
        self.v_unit = _offset(self.v_qdq) != 0.0  # v gets a channel of code 1 for its zero-point term (_mix)
        self.moved = layout.integer_transposes and self._can_move()
        if self.moved:
            self._init_moved()

    def _can_move(self) -> bool:
        if not (isinstance(self.qkv, ExportLinear) and isinstance(self.proj, ExportLinear)):
            return False
        return all(_per_tensor(m) for m in (self.q_qdq, self.k_qdq, self.v_qdq, self.proj.input_qdq))

    def _init_moved(self) -> None:
        """q, k, v from three slices of the qkv weight, each quantized where it is written, before its
        transpose; the attention output quantized for ``proj`` before its transpose."""
        c = self.qkv.bias.numel() // 3
        self.qkv_input = self.qkv.input_qdq
        self.lins = nn.ModuleList(ExportLinearPart(self.qkv, i * c, (i + 1) * c) for i in range(3))
        self.out_move = QDQMove(self.proj.input_qdq, (0, 2, 1, 3), merge_last=True)  # (B, H, N, D) -> (B, N, H·D)
        self.proj.input_qdq = nn.Identity()
        del self.qkv

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Quantized ``q`` (B, H, N, D), ``kᵀ`` (B, H, D, N), ``v`` (B, H, N, D) of ``x`` (B, N, C), and
        q's zero-point term for the scores (B, H, 1, N), or None (see :meth:`_scores`)."""
        B, N, _ = x.shape
        if self.moved:  # QuantizeLinear → DequantizeLinear → Reshape → Transpose → MatMul: both runtimes fuse it
            x = self.qkv_input(x)
            q, k, v = (lin(x).reshape(B, N, self.num_heads, -1) for lin in self.lins)
            q, k, v = self.q_qdq(q), self.k_qdq(k), self.v_qdq(self._with_unit(v))
            alpha = _offset(self.q_qdq)
            term = (alpha * k.sum(-1)).transpose(1, 2).unsqueeze(2) if alpha else None  # (B, H, 1, N)
            return q.transpose(1, 2), k.permute(0, 2, 3, 1), v.transpose(1, 2), term
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        q, k = self._qk_norm(q, k)
        return self.q_qdq(q), self.k_qdq(k.transpose(-2, -1)), self.v_qdq(self._with_unit(v)), None

    def _with_unit(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` (float, before its quantizer) with one more channel that quantizes to code 1, if v has a
        zero-point term: ``p @`` that channel is ``s_v Σ_j p``, the term's row sums, computed by the
        attention matmul itself (so OpenVINO still fuses the attention into one integer subgraph)."""
        if not self.v_unit:
            return v
        unit = (1.0 - float(self.v_qdq.zero_point)) * float(self.v_qdq.scale)  # code round(unit/s) + z = 1
        return torch.cat([v, v[..., :1] * 0.0 + unit], dim=-1)

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def _scores(self, a: torch.Tensor, b: torch.Tensor, term: torch.Tensor | None = None) -> torch.Tensor:
        """``Q(q)·scale @ Q(k)ᵀ`` from the quantized ``a`` (q) and ``b`` (kᵀ), up to a constant per row
        (which the softmax ignores).

        With zero-point-free operands ``a = q̂ + α``, ``b = k̂ᵀ + β``: ``q̂ @ k̂ᵀ = a @ b − α Σ_d b −
        β Σ_d a + D α β``; the last two terms are constant along a row of scores and are left out;
        ``term`` is ``α Σ_d b`` if the caller has it.
        """
        scores = a @ b  # (B, H, N, N)
        alpha = _offset(self.q_qdq)
        if alpha:
            scores = scores - (alpha * b.sum(-2, keepdim=True) if term is None else term)
        return scores if self.scale_folded else scores * self.scale

    def _mix(self, scores: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``Q(softmax) @ Q(v)`` from the quantized ``b`` (v), exact also with zero-point-free operands
        (see :meth:`_scores`): ``p̂ @ v̂ = p @ b − β Σ_j p − α Σ_j b + N α β`` (``β Σ_j p`` from v's
        unit channel, :meth:`_with_unit`)."""
        p = self.probs_qdq(scores.softmax(dim=-1))
        out = p @ b  # (B, H, N, D), or (B, H, N, D + 1) with v's unit channel
        alpha, beta = _offset(self.probs_qdq), _offset(self.v_qdq)
        if self.v_unit:  # β Σ_j p = z_v · (p @ unit channel): exact, no second reader of p
            out, b = out[..., :-1] - float(self.v_qdq.zero_point) * out[..., -1:], b[..., :-1]
        elif beta:
            out = out - beta * p.sum(-1, keepdim=True)
        if alpha:
            out = out - alpha * b.sum(-2, keepdim=True) + (alpha * beta * p.shape[-1] if beta else 0.0)
        return out

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) -> ``proj`` of (B, N, H·D)."""
        if self.moved:
            return self.proj(self.out_move(out))
        B, _, N, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, N, -1))


class ExportAttention(_ExportAttnBase):
    """timm ``Attention`` (via :class:`QuantAttention`) with explicit, QDQ-fed matmuls."""

    def __init__(self, m: QuantAttention, policy: str, points: _Points, layout: Layout | None = None):
        super().__init__()
        if getattr(m, "gate", None) is not None:
            raise ConfigError(f"attention {m.q_quantizer.name.rsplit('.', 1)[0]}: gated attention is not exportable")
        self.q_norm, self.k_norm, self.norm = m.q_norm, m.k_norm, m.norm
        plain = all(isinstance(n, nn.Identity) for n in (m.q_norm, m.k_norm, m.norm))
        layout = layout or Layout()
        self._init_quant(m, policy, points, layout if plain else dataclasses.replace(layout, integer_transposes=False))

    def _qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise ConfigError("export: attention masks (attn_mask, is_causal) are not supported")
        a, b, v, term = self._qkv(x)
        out = self._mix(self._scores(a, b, term), v)
        if self.moved:
            return self._output(out)
        B, _, N, _ = out.shape
        return self.proj(self.norm(out.transpose(1, 2).reshape(B, N, -1)))


class ExportWindowAttention(_ExportAttnBase):
    """Swin ``WindowAttention`` with explicit matmuls; relative position bias and shift mask are added
    to the scores before the softmax (the mask broadcast over the batch, so the batch stays dynamic)."""

    def __init__(self, m: QuantWindowAttention, policy: str, points: _Points, layout: Layout | None = None):
        super().__init__()
        self._init_quant(m, policy, points, layout or Layout())
        with torch.no_grad():
            self.register_buffer("rel_pos_bias", m._get_rel_pos_bias().detach().clone())  # (1, H, N, N)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        a, b, v, term = self._qkv(x)  # x: (B_, N, C), B_ = batch * windows, N = window area
        H, N = self.num_heads, x.shape[1]
        scores = self._scores(a, b, term) + self.rel_pos_bias
        if mask is not None:
            num_win = mask.shape[0]
            scores = scores.view(-1, num_win, H, N, N) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, H, N, N)
        return self._output(self._mix(scores, v))


_EXPORTERS = {
    QuantLinear: ExportLinear,
    QuantConv2d: ExportConv2d,
    QuantLayerNorm: ExportLayerNorm,
    QuantAttention: ExportAttention,
    QuantWindowAttention: ExportWindowAttention,
}


def export_generic(m: GenericQuantOps, policy: str, points: _Points, weights: dict[str, torch.Tensor]) -> None:
    """A generic quantized attention module (:mod:`vitcompress.nn.generic`) made exportable in place: each
    op point becomes a QDQ pair (or ``nn.Identity``) and the explicit matmuls always run; the linears it
    calls through ``F.linear`` (already :class:`ExportLinear`) keep a ``weight`` attribute by which
    the call is recognised (the graph never reads it)."""
    for op in m.op_points:
        holder = getattr(m, op)
        for attr, qz in list(holder.named_children()):
            kt = op.startswith("sdpa") and attr == "k_quantizer"  # quantized after its transpose (generic._sdpa)
            setattr(holder, attr, activation_qdq(qz, policy, points, axis_map=-2 if kt else None))
    for path, weight in weights.items():
        m.get_submodule(path).weight = weight
    m.explicit = True


def _replace(module: nn.Module, policy: str, points: _Points, layout: Layout) -> None:
    for name, child in list(module.named_children()):
        generic = isinstance(child, GenericQuantOps)  # its linears' weights, before the children are replaced
        weights = {p: child.get_submodule(p).weight.detach() for p in child.functional_linears} if generic else {}
        _replace(child, policy, points, layout)  # children first: attention wraps its converted qkv / proj
        if generic:
            export_generic(child, policy, points, weights)
            continue
        exporter = _EXPORTERS.get(type(child))
        if exporter is not None:
            attention = exporter in (ExportAttention, ExportWindowAttention)
            setattr(
                module, name, exporter(child, policy, points, layout) if attention else exporter(child, policy, points)
            )


def to_export_model(
    model: nn.Module, policy: str = "promote", layout: Layout | None = None
) -> tuple[nn.Module, list[PointExport]]:
    """A copy of quantized ``model`` made of QDQ ops (see the module docstring), and the point report.

    Args:
        model: a model quantized by :func:`vitcompress.quantize.quantize_` (or ``restore``).
        policy: for points ONNX Runtime cannot run at their bits: ``promote``, ``float`` or ``error``.
        layout: op placement (:class:`Layout`; default: every choice on).

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
        _replace(out, policy, points, layout or Layout())
    left = [m.name for m in out.modules() if isinstance(m, Quantizer)]
    if left:
        raise ConfigError(f"export: quantizers outside the known layers cannot be exported: {left[:4]}")
    for p in out.parameters():
        p.requires_grad_(False)
    return out, list(points)
