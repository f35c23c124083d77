"""The squared quantization error of histogrammed data, in closed form (the range searches of
:mod:`vitcompress.quant.observers` minimise it).

Values are taken as uniform inside each bin; the error of a bin is the integral of the squared rounding and
clipping error over it, exact for that density even when a bin is wider than a quantization step.
"""

from __future__ import annotations

import torch


def _cum_sq_err(v: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """``P(v) = ∫_0^v (clamp(round(u), low, high) − u)² du`` in code units (closed form).

    Inside ``[low − ½, high + ½]`` the integrand is periodic with mean 1/12 per code; beyond, it is
    the squared distance to the clipping code.
    """
    m = torch.minimum(torch.maximum(v, low - 0.5), high + 0.5)
    w = m + 0.5
    r = w - w.floor()
    inside = w.floor() / 12 + ((r - 0.5) ** 3 + 0.125) / 3 - 1 / 24
    above = ((v - high).clamp_min(0.5) ** 3 - 0.125) / 3
    below = ((low - v).clamp_min(0.5) ** 3 - 0.125) / 3
    return inside + above - below


def hist_sq_error(
    lower: torch.Tensor,
    upper: torch.Tensor,
    counts: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
) -> torch.Tensor:
    """Sum of squared quantization errors of histogrammed data, per row.

    Values are assumed uniform inside each bin ``[lower, upper]`` (R, bins), so the error of a bin is
    exact for that density even when a bin is wider than a quantization step. ``scale``, ``zero``,
    ``qmin``, ``qmax`` are per row (R, 1), or (T, R, 1) for T candidates at once (the result is then (T, R)).
    """
    low, high = qmin - zero, qmax - zero  # clamp(round(x/s) + z, qmin, qmax) − z = clamp(round(x/s), low, high)
    a, b = lower / scale, upper / scale
    return _sum_bin_errors(a, b, _cum_sq_err(b, low, high) - _cum_sq_err(a, low, high), counts, scale, low, high)


def edges_sq_error(
    edges: torch.Tensor,
    counts: torch.Tensor,
    scale: torch.Tensor,
    zero: torch.Tensor,
    qmin: torch.Tensor,
    qmax: torch.Tensor,
) -> torch.Tensor:
    """:func:`hist_sq_error` for contiguous bins given by their edges (R, bins + 1): the same values, bit for
    bit, with the closed form evaluated once per edge instead of twice."""
    low, high = qmin - zero, qmax - zero
    e = edges / scale
    cum = _cum_sq_err(e, low, high)
    return _sum_bin_errors(e[..., :-1], e[..., 1:], cum[..., 1:] - cum[..., :-1], counts, scale, low, high)


def _sum_bin_errors(a, b, integral, counts, scale, low, high) -> torch.Tensor:
    """Σ counts · (mean squared error over each bin [a, b] in code units) · s²; a point mass where a = b."""
    width = b - a
    point = a + width / 2
    point_err = (torch.minimum(torch.maximum(point.round(), low), high) - point) ** 2
    mean_err = torch.where(width > 1e-9, integral / width.clamp_min(1e-9), point_err)
    return (counts * mean_err).sum(-1) * scale[..., 0] ** 2
