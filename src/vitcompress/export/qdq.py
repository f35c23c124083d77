"""QuantizeLinear / DequantizeLinear as traceable torch ops.

Two ``torch.autograd.Function``\\ s whose forward is the fake quantization vitcompress computes
(``vitcompress.quant.functional.fake_quant``: ``q = clamp(round(x/s) + z)``, ``x̂ = (q − z)·s``)
and whose ``symbolic`` emits the ONNX nodes with the same meaning, so the TorchScript exporter
writes QDQ pairs with the quantizer's own scale and zero point:

- :class:`QDQ` (a module): ``QuantizeLinear → DequantizeLinear`` on an activation, per tensor or
  per axis (PTF: one scale per channel of the last axis);
- :class:`DequantizeWeight` (a module): ``DequantizeLinear`` of an int8 initializer (the weight
  codes), per output channel.

ONNX ``QuantizeLinear`` saturates to its zero point's type (uint8 ``[0, 255]``, int8
``[−128, 127]``), which is the 8-bit grid of ``vitcompress.quant.functional.qrange``; that is why
only 8-bit activation grids are exported (the callers promote or refuse the others).
"""

from __future__ import annotations

import torch
from torch import nn

from vitcompress.quant.functional import fake_quant


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


class _QuantizeDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, dq_scale, dq_zero_point, axis, qmin, qmax):  # noqa: D102
        z = zero_point.to(scale.dtype)
        if dq_zero_point is not None:  # de-quantized without the zero point: code·dq_scale
            codes = torch.clamp(torch.round(x / _broadcast(scale, x, axis)) + _broadcast(z, x, axis), qmin, qmax)
            return (codes * _broadcast(dq_scale, x, axis)).to(x.dtype)
        y = fake_quant(x, _broadcast(scale, x, axis), _broadcast(z, x, axis), qmin, qmax)
        if dq_scale is not scale:  # a folded constant factor: (code − z)·(s·factor)
            y = y / _broadcast(scale, x, axis) * _broadcast(dq_scale, x, axis)
        return y.to(x.dtype)

    @staticmethod
    def symbolic(g, x, scale, zero_point, dq_scale, dq_zero_point, axis, qmin, qmax):  # noqa: D102
        kw = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale, zero_point, **kw)
        dq_zero = zero_point if dq_zero_point is None else dq_zero_point
        return g.op("DequantizeLinear", q, dq_scale, dq_zero, **kw)


class _Dequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, codes, scale, zero_point, axis):  # noqa: D102
        return (codes.to(scale.dtype) - _broadcast(zero_point.to(scale.dtype), codes, axis)) * _broadcast(
            scale, codes, axis
        )

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis):  # noqa: D102
        kw = {} if axis is None else {"axis_i": axis}
        return g.op("DequantizeLinear", codes, scale, zero_point, **kw)


class QDQ(nn.Module):
    """Fake quantization of an activation that exports as ``QuantizeLinear → DequantizeLinear``.

    Args:
        scale: float32 scalar (per tensor) or (C,) (per channel of ``axis``).
        zero_point: same shape; integer values in the 8-bit grid.
        signed: int8 grid ``[−128, 127]`` if True, else uint8 ``[0, 255]``.
        axis: channel axis for per-channel scales (None: per tensor).
        factor: a constant the de-quantized values are multiplied by, folded into the
            ``DequantizeLinear`` scale (the attention scale 1/√d on q: one ``Mul`` less per head).
        dq_zero: if False, ``DequantizeLinear`` has zero point 0: the output is ``code·s·factor``,
            which is ``offset`` (``z·s·factor``) above the quantized value. The caller subtracts
            ``offset`` after a matmul (see ``vitcompress.export.convert``); a matmul whose operands have
            no zero point is what OpenVINO runs on integer kernels.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        signed: bool,
        axis: int | None = None,
        factor: float = 1.0,
        dq_zero: bool = True,
    ):
        super().__init__()
        dtype = torch.int8 if signed else torch.uint8
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("dq_scale", None if factor == 1.0 else self.scale * factor)
        self.register_buffer("zero_point", zero_point.detach().round().to(dtype))
        self.register_buffer("dq_zero_point", None if dq_zero else torch.zeros_like(self.zero_point))
        self.axis = axis if scale.dim() else None
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)
        self.factor = factor

    @property
    def offset(self) -> torch.Tensor:
        """What the output exceeds the quantized value by: 0, or ``z·s·factor`` when ``dq_zero`` is False."""
        if self.dq_zero_point is None:
            return torch.zeros_like(self.scale)
        return self.zero_point.float() * (self.scale if self.dq_scale is None else self.dq_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dq_scale = self.scale if self.dq_scale is None else self.dq_scale
        return _QuantizeDequantize.apply(
            x, self.scale, self.zero_point, dq_scale, self.dq_zero_point, self.axis, self.qmin, self.qmax
        )

    def extra_repr(self) -> str:
        kind = "int8" if self.qmin < 0 else "uint8"
        dq = "" if self.dq_zero_point is None else ", dequantized without zero point"
        return f"{kind}, {'per tensor' if self.axis is None else f'axis {self.axis}'}{dq}"


class DequantizeWeight(nn.Module):
    """An int8 weight held as codes; ``forward()`` returns the float weight via ``DequantizeLinear``.

    Args:
        codes: int8 tensor (the integer grid values).
        scale: float32 (C,) along ``axis`` (or a scalar).
        axis: the channel axis of ``codes`` that ``scale`` runs along.
    """

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, axis: int):
        super().__init__()
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", torch.zeros(scale.shape, dtype=torch.int8))
        self.axis = axis if scale.dim() else None

    def forward(self) -> torch.Tensor:
        return _Dequantize.apply(self.codes, self.scale, self.zero_point, self.axis)


class _QuantizeMoveDequantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, dq_scale, dq_zero_point, qmin, qmax, perm, merge_last):  # noqa: D102
        y = _QuantizeDequantize.forward(ctx, x, scale, zero_point, dq_scale, dq_zero_point, None, qmin, qmax)
        y = y.permute(*perm)
        return y.reshape(*y.shape[:-2], -1) if merge_last else y

    @staticmethod
    def symbolic(g, x, scale, zero_point, dq_scale, dq_zero_point, qmin, qmax, perm, merge_last):  # noqa: D102
        q = g.op("QuantizeLinear", x, scale, zero_point)
        q = g.op("Transpose", q, perm_i=list(perm))
        if merge_last:  # (…, A, B) -> (…, A·B); 0 keeps a dimension as it is
            shape = torch.tensor([0] * (len(perm) - 2) + [-1], dtype=torch.int64)
            q = g.op("Reshape", q, g.op("Constant", value_t=shape))
        return g.op("DequantizeLinear", q, dq_scale, zero_point if dq_zero_point is None else dq_zero_point)


class QDQMove(nn.Module):
    """A per-tensor :class:`QDQ` with a transpose (and optionally a merge of the last two axes) between
    its ``QuantizeLinear`` and its ``DequantizeLinear``: the data movement runs on 8-bit codes, and the
    ``DequantizeLinear`` still feeds the matmul after it. Per-tensor quantization commutes with
    moving elements, so the values are those of ``qdq(x).permute(perm)``.

    Args:
        qdq: a per-tensor :class:`QDQ`, or ``nn.Identity`` (then a plain permute).
        perm: the permutation.
        merge_last: merge the last two axes after the permutation ((B, N, H, D) -> (B, N, H·D)).
    """

    def __init__(self, qdq: nn.Module, perm: tuple[int, ...], merge_last: bool = False):
        super().__init__()
        if isinstance(qdq, QDQ) and qdq.axis is not None:
            raise ValueError("QDQMove needs a per-tensor QDQ")
        self.qdq, self.perm, self.merge_last = qdq, tuple(perm), merge_last

    @property
    def offset(self) -> torch.Tensor:
        return self.qdq.offset if isinstance(self.qdq, QDQ) else torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.qdq
        if not isinstance(q, QDQ):
            y = x.permute(*self.perm)
            return y.reshape(*y.shape[:-2], -1) if self.merge_last else y
        dq_scale = q.scale if q.dq_scale is None else q.dq_scale
        return _QuantizeMoveDequantize.apply(
            x, q.scale, q.zero_point, dq_scale, q.dq_zero_point, q.qmin, q.qmax, self.perm, self.merge_last
        )
