"""Range estimation (METHODS §0.2): min-max, percentile, OMSE and MSE search.

Two kinds: functions over a whole tensor reduced per row (weights: per tensor, channel or group),
and streaming observers for activations that keep exact running min/max plus a fixed-size
histogram, so one pass over the calibration set suffices and memory does not grow with it.
"""

from __future__ import annotations

import torch

from vitcompress.errors import DataError
from vitcompress.quant.functional import qrange

OMSE_STEPS = 90  # shrink by 1 % steps, i = 0 … 89 (FQ-ViT / METHODS §0.2)
MSE_RATIOS = torch.linspace(0.3, 1.0, 100)


def check_finite(x: torch.Tensor, name: str) -> None:
    if not torch.isfinite(x).all():
        raise DataError(f"quantizer {name or '<unnamed>'}: observed data contains NaN or Inf")


def _qparams(lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor, symmetric: bool):
    """Scale, zero point, qmin, qmax (tensors of the shape of lo) for ranges [lo, hi]."""
    bits = bits.to(lo.dtype)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
        zero = torch.zeros_like(scale)
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)  # zero must be exactly representable
        qmin, qmax = torch.zeros_like(bits), 2**bits - 1
        scale = (hi - lo) / (qmax - qmin)
        scale = scale.clamp_min(1e-8)
        zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale.clamp_min(1e-8), zero, qmin, qmax


def qparams_from_range(lo, hi, bits, symmetric: bool):
    """Public form of the scale/zero-point rule: symmetric ``s = max|x|/qmax``, asymmetric
    ``s = (max − min)/(qmax − qmin)``, ``z = qmin − round(min/s)`` (range widened to include 0)."""
    return _qparams(lo, hi, torch.as_tensor(bits, dtype=lo.dtype).expand_as(lo), symmetric)


def _row_error(rows: torch.Tensor, lo, hi, bits, symmetric: bool, weights=None) -> torch.Tensor:
    """Squared quantization error of each row (R, K) for candidate ranges (…, R, 1)."""
    scale, zero, qmin, qmax = _qparams(lo, hi, bits, symmetric)
    q = torch.clamp(torch.round(rows / scale) + zero, qmin, qmax)
    err = ((q - zero) * scale - rows) ** 2
    return (err * weights).sum(-1) if weights is not None else err.sum(-1)


def search_range(rows: torch.Tensor, bits: torch.Tensor, symmetric: bool, observer: str,
                 percentile: float = 99.99, weights: torch.Tensor | None = None):
    """Range [lo, hi] per row of ``rows`` (R, K) for ``observer``; ``bits`` (R,).

    ``weights`` (R, K) turns ``rows`` into histogram bin centres with counts (streaming case).
    """
    if weights is None:
        lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    else:
        present = weights > 0
        lo = torch.where(present, rows, torch.full_like(rows, torch.inf)).amin(dim=1)
        hi = torch.where(present, rows, torch.full_like(rows, -torch.inf)).amax(dim=1)
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        if weights is None:
            q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=rows.dtype)
            qs = torch.quantile(rows, q, dim=1) if rows.shape[1] <= 16_000_000 else None
            return qs[0], qs[1]
        cdf = weights.cumsum(1) / weights.sum(1, keepdim=True)
        lo_i = (cdf < 1 - percentile / 100).sum(1).clamp(max=rows.shape[1] - 1)
        hi_i = (cdf < percentile / 100).sum(1).clamp(max=rows.shape[1] - 1)
        return rows.gather(1, lo_i[:, None])[:, 0], rows.gather(1, hi_i[:, None])[:, 0]
    ratios = (1.0 - 0.01 * torch.arange(OMSE_STEPS, dtype=rows.dtype)) if observer == "omse" \
        else MSE_RATIOS.to(rows.dtype)
    best_lo, best_hi = lo.clone(), hi.clone()
    best_err = torch.full_like(lo, torch.inf)
    for r in ratios:  # ≤ 100 candidates; each evaluated on all rows at once
        err = _row_error(rows, (lo * r)[:, None], (hi * r)[:, None], bits[:, None], symmetric, weights)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
    return best_lo, best_hi


class HistogramObserver:
    """Streaming per-tensor statistics: exact running min/max and a histogram of ``bins`` bins.

    When a batch falls outside the current histogram range, the range is widened (at least doubled,
    to re-bin rarely) and the old counts are moved to the bins holding their old centres.
    """

    def __init__(self, name: str = "", bins: int = 2048):
        self.name, self.bins = name, bins
        self.min = self.max = None
        self.lo = self.hi = None
        self.hist: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        check_finite(x, self.name)
        x_min, x_max = x.min(), x.max()
        self.min = x_min if self.min is None else torch.minimum(self.min, x_min)
        self.max = x_max if self.max is None else torch.maximum(self.max, x_max)
        if self.hist is None:
            self.lo, self.hi = float(x_min), float(max(x_max, x_min + 1e-8))
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        elif x_min < self.lo or x_max > self.hi:
            self._widen(float(x_min), float(x_max))
        self.hist += torch.histc(x, self.bins, self.lo, self.hi).double()
        self.count += x.numel()

    def _widen(self, x_min: float, x_max: float) -> None:
        width = self.hi - self.lo
        lo, hi = min(self.lo, x_min), max(self.hi, x_max)
        pad = max(0.0, 2 * width - (hi - lo)) / 2  # at least double the range, to re-bin rarely
        lo, hi = lo - pad, hi + pad
        idx = ((self.centres() - lo) / (hi - lo) * self.bins).long().clamp(0, self.bins - 1)
        hist = torch.zeros(self.bins, dtype=torch.float64)
        hist.index_add_(0, idx, self.hist)
        self.lo, self.hi, self.hist = lo, hi, hist

    def centres(self) -> torch.Tensor:
        edges = torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)
        return (edges[:-1] + edges[1:]) / 2

    def range(self, observer: str, bits: int, symmetric: bool, percentile: float = 99.99):
        """(lo, hi) as 0-dim tensors. min-max is exact; the others come from the histogram."""
        if self.hist is None:
            raise DataError(f"quantizer {self.name or '<unnamed>'}: no data observed; run calibration first")
        if observer == "minmax":
            return self.min.clone(), self.max.clone()
        centres = self.centres()
        # the exact extremes replace the outermost occupied centres, so OMSE's i = 0 equals min-max
        centres[0], centres[-1] = float(self.min), float(self.max)
        lo, hi = search_range(centres[None], torch.tensor([bits], dtype=torch.float64), symmetric, observer,
                              percentile, weights=self.hist[None])
        return lo[0].float(), hi[0].float()


class ChannelHistogramObserver:
    """Streaming per-channel statistics (channels on the last axis) for the PTF quantizer:
    per-channel exact min/max and per-channel histograms over one shared, growing range."""

    def __init__(self, num_channels: int, name: str = "", bins: int = 512):
        self.name, self.bins, self.c = name, bins, num_channels
        self.min = self.max = None
        self.lo = self.hi = None
        self.hist: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1, self.c)  # (tokens, C)
        check_finite(x, self.name)
        c_min, c_max = x.amin(0), x.amax(0)
        self.min = c_min if self.min is None else torch.minimum(self.min, c_min)
        self.max = c_max if self.max is None else torch.maximum(self.max, c_max)
        lo, hi = float(c_min.min()), float(c_max.max())
        if self.hist is None:
            self.lo, self.hi = lo, max(hi, lo + 1e-8)
            self.hist = torch.zeros(self.c, self.bins, dtype=torch.float64)
        elif lo < self.lo or hi > self.hi:
            self._widen(lo, hi)
        idx = ((x - self.lo) / (self.hi - self.lo) * self.bins).long().clamp(0, self.bins - 1)
        flat = idx + torch.arange(self.c) * self.bins  # (tokens, C): bin index in the flat (C*bins) table
        self.hist.view(-1).index_add_(0, flat.flatten(), torch.ones(flat.numel(), dtype=torch.float64))

    def _widen(self, lo: float, hi: float) -> None:
        width = self.hi - self.lo
        new_lo, new_hi = min(lo, self.lo), max(hi, self.hi)
        pad = max(0.0, 2 * width - (new_hi - new_lo)) / 2
        new_lo, new_hi = new_lo - pad, new_hi + pad
        idx = ((self.centres() - new_lo) / (new_hi - new_lo) * self.bins).long().clamp(0, self.bins - 1)
        hist = torch.zeros_like(self.hist)
        hist.index_add_(1, idx, self.hist)
        self.lo, self.hi, self.hist = new_lo, new_hi, hist

    def centres(self) -> torch.Tensor:
        edges = torch.linspace(self.lo, self.hi, self.bins + 1, dtype=torch.float64)
        return (edges[:-1] + edges[1:]) / 2

    def ptf_params(self, bits: int, max_alpha: int = 3):
        """FQ-ViT PTF: layer scale from the layer range; per channel α minimising its L2 error.

        Returns (scale s = s_layer / 2^max_alpha, shared zero point, alpha per channel).
        """
        if self.hist is None:
            raise DataError(f"quantizer {self.name or '<unnamed>'}: no data observed; run calibration first")
        qmin, qmax = qrange(bits, symmetric=False)
        lo, hi = min(float(self.min.min()), 0.0), max(float(self.max.max()), 0.0)
        s_layer = max((hi - lo) / (qmax - qmin), 1e-8)
        zero = float(min(max(qmin - round(lo / s_layer), qmin), qmax))
        base = s_layer / 2**max_alpha
        centres = self.centres()
        errors = []
        for a in range(max_alpha + 1):
            s = base * 2**a
            x_hat = (torch.clamp(torch.round(centres / s) + zero, qmin, qmax) - zero) * s
            errors.append((self.hist * (x_hat - centres) ** 2).sum(1))  # (C,)
        alpha = torch.stack(errors).argmin(0)  # ties go to the smallest α (finest scale)
        return torch.tensor(base), torch.tensor(zero), alpha
