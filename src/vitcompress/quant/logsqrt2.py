"""Log√2 quantizer of attention probabilities (RepQ-ViT).

From Zhikai Li, Junrui Xiao, Lianwei Yang, Qingyi Gu, "RepQ-ViT: Scale Reparameterization for
Post-Training Quantization of Vision Transformers", ICCV 2023, arXiv:2212.08254 (section 3.3):

    q = clamp(round(−log_√2(x / s)), 0, 2^b − 1) = clamp(round(−2·log2(x / s)), 0, 2^b − 1),
    x̂ = s · 2^(−q/2),

and values whose code would exceed ``2^b − 1`` (and zeros) become 0. Against log2 (FQ-ViT) the grid
is twice as fine (ratio √2 between levels instead of 2), which resolves the large probabilities that
carry the attention output; the price is that 4 bits reach down to ``s·2^−7.5`` instead of
``2^−15``, which the softmax's many tiny probabilities do not need. An odd code is an even one times
√2, so an integer kernel computes ``2^−⌈q/2⌉`` as a shift and multiplies odd codes by √2 once (the
paper's eq. 10). The scale ``s`` is a power-independent constant kept per tensor: the candidate among
the observed maximum, its 99.9/99.99/99.999 percentiles and 1 (probabilities never exceed it) with the
least squared error on the calibration histogram.
"""

from __future__ import annotations

import torch

from vitcompress.config import QuantSpec
from vitcompress.quant.observers import HistogramObserver, check_finite
from vitcompress.quant.quantizer import Quantizer

PERCENTILES = (0.999, 0.9999, 0.99999)  # scale candidates besides max and 1, as RepQ-ViT searches


def log_sqrt2_codes(x: torch.Tensor, scale: torch.Tensor | float, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, zero)``: the codes ``clamp(round(−2·log2(x/s)), 0)`` (unclamped above) and the mask of values
    that quantize to 0 (non-positive, or a code above ``2^b − 1``)."""
    positive = x > 0
    ratio = torch.where(positive, x / scale, torch.ones_like(x))  # dummy 1 keeps log2 finite; masked below
    q = torch.round(-2.0 * torch.log2(ratio)).clamp_min(0.0)
    return q, ~positive | (q > 2**bits - 1)


def log_sqrt2_fake_quant(x: torch.Tensor, scale: torch.Tensor | float, bits: int) -> torch.Tensor:
    """Log√2 fake quantization ``x̂ = s·2^(−q/2)`` (module docstring) with a straight-through gradient.

    Args:
        x: probabilities (non-negative).
        scale: the largest level ``s`` (> 0).
        bits: bit width, 2..16.
    """
    q, zero = log_sqrt2_codes(x, scale, bits)
    x_hat = torch.where(zero, torch.zeros_like(x), scale * torch.exp2(-0.5 * q))
    return x_hat.detach() + (x - x.detach())  # exactly x̂ (x − x.detach() is 0), gradient 1 to x


class LogSqrt2Quantizer(Quantizer):
    """Log√2 quantizer (scheme ``log_sqrt2``): one calibrated scale ``s`` per tensor, buffer ``scale``."""

    def __init__(self, spec: QuantSpec, name: str = ""):
        super().__init__(spec, name)
        self.register_buffer("scale", torch.tensor(1.0))
        self._hist: HistogramObserver | None = None

    def reset_stats(self) -> None:
        self._hist = None

    def observe(self, x: torch.Tensor) -> None:
        if not self.spec.enabled:
            return
        check_finite(x, self.name)
        if self._hist is None:
            self._hist = HistogramObserver(self.name)
        self._hist.update(x)

    def candidates(self) -> torch.Tensor:
        """The scales tried: observed max, high percentiles, and 1 (float64, positive)."""
        h = self._hist
        values = [
            h.max[0],
            *(h.quantile(p)[0] for p in PERCENTILES),
            torch.ones((), dtype=torch.float64, device=h.max.device),
        ]
        return torch.stack(values).clamp_min(1e-8)

    def compute_qparams(self) -> None:
        if not self.spec.enabled:
            return
        if self._hist is None:
            raise self._error("no data observed; run calibration first")
        lower, upper = self._hist.bin_edges()
        centers, counts = ((lower + upper) / 2)[0], self._hist.hist[0]
        errors = [
            (counts * (log_sqrt2_fake_quant(centers, s, self.spec.bits) - centers) ** 2).sum()
            for s in self.candidates()
        ]
        best = self.candidates()[int(torch.stack(errors).argmin())]
        self._check_qparams(best.float(), torch.zeros(()))
        self.scale.fill_(float(best))
        self.calibrated.fill_(True)

    def qparam_count(self) -> int:
        return 1 if self.active else 0

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return log_sqrt2_fake_quant(x, self.scale, self.spec.bits)
