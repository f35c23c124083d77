"""AdaRound: learned rounding of a layer's weight, up or down, per element.

Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training
Quantization", ICML 2020, arXiv:2004.10568. The weight is ``W̃ = s·(clamp(⌊W/s⌋ + h(V) + z, qmin, qmax) − z)``
with the rectified sigmoid ``h(V) = clamp(σ(V)(ζ − γ) + γ, 0, 1)`` (eq. 23, ζ = 1.1, γ = −0.1) and the
regularizer ``Σ 1 − |2h(V) − 1|^β`` (eq. 24) that pushes every ``h`` to 0 or 1 as β anneals.

The layer's weight quantizer keeps its scale and zero point; a forward hook on it replaces its output with
``W̃`` while learning. :meth:`AdaRound.bake` writes the hard-rounded weight (``h`` ≥ 0.5 rounds up) into the
layer's float weight: that weight lies on the quantizer's grid, so the quantizer returns it unchanged and the
saved model (weights + scales) reproduces the learned rounding exactly, with no extra state.
"""

from __future__ import annotations

import torch
from torch import nn

from vitcompress.quant.quantizer import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (Nagel et al. 2020, eq. 23)


def roundable(qz: nn.Module) -> bool:
    """Whether AdaRound can learn the rounding of this weight quantizer (uniform, static, active)."""
    return isinstance(qz, UniformQuantizer) and qz.active and qz.is_calibrated and qz.spec.granularity != "token"


class AdaRound:
    """The rounding variables ``V`` of one layer's weight and the hook that uses them.

    Args:
        layer: a ``QuantLinear``/``QuantConv2d`` whose ``weight_quantizer`` is :func:`roundable`.
    """

    def __init__(self, layer: nn.Module):
        self.layer, qz = layer, layer.weight_quantizer
        w = layer.weight.detach()
        self.scale = qz._broadcast(qz.scale.detach(), w)  # (O, 1, ...) per channel/group, or a scalar
        self.zero = qz._broadcast(qz.zero_point.detach(), w)
        self.qmin, self.qmax = qz.qbounds(w)
        u = w / self.scale
        self.floor = torch.floor(u)
        rest = (u - self.floor).clamp(0.0, 1.0)
        # V such that h(V) equals the fractional part: learning starts from round-to-nearest's neighbourhood
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0))
        self._handle = qz.register_forward_hook(lambda _m, _i, _o: self.weight())

    def h(self) -> torch.Tensor:
        """The soft rounding offset in [0, 1] (eq. 23)."""
        return (torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)

    def weight(self, hard: bool = False) -> torch.Tensor:
        """``W̃``: soft (differentiable in ``V``) or hard (``h ≥ 0.5`` rounds up, i.e. ``V ≥ 0``)."""
        offset = (self.v.detach() >= 0).to(self.floor.dtype) if hard else self.h()
        q = torch.clamp(self.floor + offset + self.zero, self.qmin, self.qmax)
        return (q - self.zero) * self.scale

    def regularizer(self, beta: float) -> torch.Tensor:
        """``Σ 1 − |2h(V) − 1|^β`` (eq. 24)."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()

    def bake(self) -> None:
        """Write the hard-rounded weight into the layer and remove the hook."""
        self._handle.remove()
        with torch.no_grad():
            self.layer.weight.copy_(self.weight(hard=True))

    def remove(self) -> None:
        """Remove the hook, leaving the weight as it was (an interrupted reconstruction)."""
        self._handle.remove()
