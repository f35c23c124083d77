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
    def forward(ctx, x, scale, zero_point, dq_scale, axis, qmin, qmax):  # noqa: D102
        z = zero_point.to(scale.dtype)
        y = fake_quant(x, _broadcast(scale, x, axis), _broadcast(z, x, axis), qmin, qmax)
        if dq_scale is not scale:  # a folded constant factor: (code − z)·(s·factor)
            y = y / _broadcast(scale, x, axis) * _broadcast(dq_scale, x, axis)
        return y.to(x.dtype)

    @staticmethod
    def symbolic(g, x, scale, zero_point, dq_scale, axis, qmin, qmax):  # noqa: D102
        kw = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale, zero_point, **kw)
        return g.op("DequantizeLinear", q, dq_scale, zero_point, **kw)


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
    """

    def __init__(
        self, scale: torch.Tensor, zero_point: torch.Tensor, signed: bool, axis: int | None = None, factor: float = 1.0
    ):
        super().__init__()
        dtype = torch.int8 if signed else torch.uint8
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("dq_scale", None if factor == 1.0 else self.scale * factor)
        self.register_buffer("zero_point", zero_point.detach().round().to(dtype))
        self.axis = axis if scale.dim() else None
        self.qmin, self.qmax = (-128, 127) if signed else (0, 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dq_scale = self.scale if self.dq_scale is None else self.dq_scale
        return _QuantizeDequantize.apply(x, self.scale, self.zero_point, dq_scale, self.axis, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        kind = "int8" if self.qmin < 0 else "uint8"
        return f"{kind}, {'per tensor' if self.axis is None else f'axis {self.axis}'}"


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
