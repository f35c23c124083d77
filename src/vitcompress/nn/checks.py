"""Checks that a model's numbers are usable before (and after) quantization: every weight, buffer and
quantizer scale finite, and no calibrated scale zero."""

from __future__ import annotations

import torch
from torch import nn

from vitcompress.errors import DataError
from vitcompress.quant import Quantizer


def _nonfinite(t: torch.Tensor) -> int:
    if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t).all()):
        return 0
    return int((~torch.isfinite(t)).sum())


def check_finite_weights(model: nn.Module, where: str = "model") -> None:
    """Raise a one-line :class:`DataError` naming the first parameter or buffer of ``model`` that holds NaN
    or Inf, or the first calibrated quantizer whose scale is zero.

    Call it on a float model before quantizing (a NaN weight otherwise surfaces later as a NaN activation
    statistic of some other layer) and on a restored one. ``where`` starts the message (e.g. a file name).
    """
    for kind, named in (("weight", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            bad = _nonfinite(t.detach())
            if bad:
                raise DataError(
                    f"{where}: {kind} {name} holds {bad} NaN/Inf value{'s' if bad > 1 else ''} (of {t.numel()})"
                )
    for name, qz in model.named_modules():
        if isinstance(qz, Quantizer) and qz.active and qz.is_calibrated:
            scale = getattr(qz, "scale", None)
            if isinstance(scale, torch.Tensor) and bool((scale == 0).any()):
                raise DataError(f"{where}: quantizer {qz.name or name} has a zero scale; calibrate it again")
