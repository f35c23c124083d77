"""Range estimation: min-max, percentile, OMSE and MSE search.

OMSE (Choukroun, Kravchik, Yang, Kisilev, "Low-bit Quantization of Neural Networks for Efficient
Inference", ICCV Workshops 2019, arXiv:1902.06822) picks the clipping range with the least mean
squared quantization error; as in FQ-ViT's code (Lin et al., IJCAI 2022, arXiv:2111.13824) the search
shrinks ``[min, max]`` in 1 % steps, ``[min, max]·(1 − 0.01 i)`` for i = 0…89.

Two kinds:

* functions over a whole tensor (weights), reduced to one range per tensor, output channel or group
  of channels (:func:`to_rows`, :func:`search_range`, :func:`tensor_range`); the search runs on the
  exact values;
* streaming observers (:class:`RowHistogram` and its per-tensor / per-channel forms) for
  activations: exact running min/max plus fixed-size histograms, so one pass over the calibration
  set suffices and memory does not grow with the number of images. Percentile, OMSE
  and MSE ranges, and the PTF factors, are computed from the histograms.

When the range grows, the histogram is re-binned by merging ``2^k`` adjacent old bins into one new
bin, with the new edges on old edges, so re-binning moves no count across a value boundary (no
error beyond the coarser resolution) and the range at least doubles each time.
"""

from __future__ import annotations

import math

import torch

from vitcompress.errors import ConfigError, DataError
from vitcompress.quant.functional import qrange
from vitcompress.quant.histerror import edges_sq_error, hist_sq_error  # noqa: F401 (hist_sq_error: re-exported)

OMSE_RATIOS = tuple(1.0 - 0.01 * i for i in range(90))  # i = 0 … 89, 1 % steps (OMSE as in FQ-ViT)
MSE_RATIOS = tuple(0.3 + 0.7 * i / 99 for i in range(100))  # finer clipping search in [0.3, 1]
_EPS_SCALE = 1e-8
CHUNK = 1 << 22  # values binned at once: bounds an update's temporaries (8 bytes a value) to 32 MiB
SEARCH_CHUNK = 1 << 20  # candidates × rows × bins evaluated at once by a range search (float64 temporaries)


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise :class:`DataError` naming quantizer ``name`` if ``x`` holds NaN or Inf."""
    if x.is_floating_point() and x.numel():
        # one read of x: a NaN anywhere propagates to the extremes and an infinity is one of them (isfinite
        # followed by all() reads x and writes a mask, many times slower)
        lo, hi = x.detach().aminmax()
        finite = math.isfinite(lo.item()) and math.isfinite(hi.item())
    else:
        finite = bool(torch.isfinite(x).all())
    if not finite:
        raise DataError(f"quantizer {name or '<unnamed>'}: observed data contains NaN or Inf")


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int | torch.Tensor, symmetric: bool):
    """Scale, zero point, qmin, qmax (tensors shaped like ``lo``) for the ranges ``[lo, hi]``.

    Symmetric: ``s = max(|lo|, |hi|)/qmax``, ``z = 0``. Asymmetric: the range is widened to include 0
    (so zero is exactly representable), ``s = (hi − lo)/(qmax − qmin)``, ``z = qmin − round(lo/s)``
    clamped to the grid. Scales are at least 1e-8 (an all-zero range still gives a valid grid).
    """
    bits = torch.as_tensor(bits, device=lo.device).to(lo.dtype).expand_as(lo)
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(_EPS_SCALE)
        return scale, torch.zeros_like(scale), qmin, qmax
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    qmin, qmax = torch.zeros_like(bits), 2**bits - 1
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS_SCALE)
    zero = torch.maximum(torch.minimum(qmin - torch.round(lo / scale), qmax), qmin)
    return scale, zero, qmin, qmax


def to_rows(x: torch.Tensor, granularity: str, axis: int = 0, group_size: int | None = None) -> torch.Tensor:
    """View ``x`` as (R, K): one row per range to estimate.

    ``tensor``: one row; ``channel``: one row per index of ``axis``; ``group``: one row per
    ``group_size`` consecutive indices of ``axis``.
    """
    if granularity == "tensor":
        return x.reshape(1, -1)
    c = x.shape[axis]
    rows = x.movedim(axis, 0).reshape(c, -1)  # (C, K)
    if granularity == "channel":
        return rows
    if granularity == "group":
        if not group_size or c % group_size:
            raise ConfigError(f"group_size must divide the {c} channels, got {group_size!r}")
        return rows.reshape(c // group_size, -1)  # consecutive channels are consecutive rows
    raise ConfigError(f"granularity must be one of ['tensor', 'channel', 'group'], got {granularity!r}")


def _ratios(observer: str) -> tuple[float, ...]:
    if observer == "omse":
        return OMSE_RATIOS
    if observer == "mse":
        return MSE_RATIOS
    raise ConfigError(f"observer must be one of ['minmax', 'percentile', 'omse', 'mse'], got {observer!r}")


def _row_quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile with linear interpolation (as ``torch.quantile``, without its size limit)."""
    s = rows.sort(dim=1).values
    pos = q * (rows.shape[1] - 1)
    i = min(int(math.floor(pos)), rows.shape[1] - 1)
    j = min(i + 1, rows.shape[1] - 1)
    return s[:, i] + (pos - i) * (s[:, j] - s[:, i])


def _dequant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor
) -> torch.Tensor:
    """The values of :func:`fake_quant` (bit for bit) without its gradient machinery."""
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


@torch.no_grad()
def search_range(
    rows: torch.Tensor, bits: int | torch.Tensor, symmetric: bool, observer: str, percentile: float = 99.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range ``(lo, hi)``, each (R,), of every row of ``rows`` (R, K) for ``observer``.

    ``minmax``: the row extremes; ``percentile``: the ``100 − p`` and ``p`` percentiles; ``omse``:
    ``[min, max]·(1 − 0.01 i)`` for i = 0…89 with the least squared quantization error (module
    docstring); ``mse``: the same over 100 ratios in [0.3, 1]. Ratio 1 (min-max) is always a candidate
    and ties keep the earlier one, so neither search is ever worse than min-max on ``rows``.

    Args:
        rows: values, one row per range.
        bits: bit width, an int or one per row (R,).
        symmetric: signed symmetric grid, else unsigned with zero point.
        observer: ``minmax``, ``percentile``, ``omse`` or ``mse``.
        percentile: for ``percentile``, in (50, 100].
    """
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        return _row_quantile(rows, 1 - percentile / 100), _row_quantile(rows, percentile / 100)
    bits = torch.as_tensor(bits, device=rows.device).expand_as(lo)
    best_lo, best_hi = lo.clone(), hi.clone()
    best_err = torch.full_like(lo, math.inf)
    for r in _ratios(observer):  # ≤ 100 candidates, each evaluated on all rows at once
        scale, zero, qmin, qmax = qparams_from_range(lo * r, hi * r, bits, symmetric)
        err = (_dequant(rows, scale[:, None], zero[:, None], qmin[:, None], qmax[:, None]) - rows).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
    return best_lo, best_hi


def tensor_range(
    x: torch.Tensor,
    observer: str,
    bits: int | torch.Tensor,
    symmetric: bool,
    granularity: str = "tensor",
    axis: int = 0,
    group_size: int | None = None,
    percentile: float = 99.99,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of a whole tensor (a weight) per tensor / channel / group along ``axis``.

    Returns ``(lo, hi)``: 0-dim tensors for ``tensor``, else shape (R,) with R channels or groups.
    """
    rows = to_rows(x.detach(), granularity, axis, group_size)
    lo, hi = search_range(rows, bits, symmetric, observer, percentile)
    return (lo[0], hi[0]) if granularity == "tensor" else (lo, hi)


class RowHistogram:
    """Streaming statistics of R rows: exact running min/max and one histogram per row.

    Row ``r`` has its own bin grid ``lo_r + i·width_r`` (i < bins), started from the first batch's
    range and grown by aligned merges (module docstring), so rows of very different magnitude
    (channels) each keep ``bins`` bins of resolution. Rows are fed as (R, K) tensors; K may differ
    between calls. Memory: R × bins float64 counts, independent of how much data is observed; the
    temporaries of one update are bounded too (values are binned :data:`CHUNK` at a time).

    With ``histogram=False`` only the exact min/max are kept (all a ``minmax`` range needs): one
    ``aminmax`` pass per update, no histogram.

    Binning runs in the input's precision (float32 for float32/16 activations, as fast as the data
    allows, and on any device): the bin of ``v`` is ``floor(((v − lo_hi) − lo_lo) / width)`` with
    ``lo`` split in two float32 parts, so a value moves to a neighbouring bin only when it lies within
    about 1e-4 of a bin width (float32 rounding, 2^-24 relative, times at most 2^11 bins) of an edge.
    """

    def __init__(self, rows: int, name: str = "", bins: int = 2048, histogram: bool = True):
        self.rows, self.name, self.bins, self.histogram = rows, name, bins, histogram
        self.min: torch.Tensor | None = None  # (R,) float64, exact
        self.max: torch.Tensor | None = None
        self.hist: torch.Tensor | None = None  # (R, bins) float64
        self.lo: torch.Tensor | None = None  # (R,) float64 lower edge of bin 0
        self.width: torch.Tensor | None = None  # (R,) float64 bin width
        self.count = 0  # values per row
        self._params: dict = {}  # the grid in the data's dtype (see _bin_params)

    @property
    def has_data(self) -> bool:
        """Whether any value was observed."""
        return self.min is not None

    def update_rows(self, rows: torch.Tensor) -> None:
        """Add the values of ``rows`` (R, K) to the statistics."""
        rows = rows.detach()
        if rows.dim() != 2 or rows.shape[0] != self.rows:
            raise DataError(
                f"quantizer {self.name or '<unnamed>'}: expected {self.rows} rows of statistics "
                f"(channels/groups), got shape {tuple(rows.shape)}"
            )
        if rows.numel() == 0:
            return
        # NaN propagates and ±Inf shows in the extremes (amin/amax along a dim are many times faster than aminmax)
        r_min, r_max = rows.amin(dim=1), rows.amax(dim=1)
        self._extend(r_min, r_max)
        if self.histogram:
            self._add(rows, row_axis=0)
        self.count += rows.shape[1]

    def _extend(self, r_min: torch.Tensor, r_max: torch.Tensor) -> None:
        """Take a batch's per-row extremes (R,): the exact min/max, and the grid grown to cover them."""
        check_finite(torch.stack([r_min, r_max]), self.name)  # a NaN/Inf anywhere shows in the extremes
        # float64 holds every float32/16 value exactly: exact min/max and bin edges
        r_min, r_max = r_min.double(), r_max.double()
        if self.min is None:
            self.min, self.max = r_min, r_max
            if self.histogram:
                self._start(r_min, r_max)
            return
        self.min, self.max = torch.minimum(self.min, r_min), torch.maximum(self.max, r_max)
        if self.histogram:
            self._grow(r_min, r_max)

    def _add(self, values: torch.Tensor, row_axis: int) -> None:
        """Count ``values`` ((R, K) with ``row_axis`` 0, or (K, R) with 1) into the histograms, in chunks.

        The grid covers every value (``_extend`` grew it first), so a value's position ``v`` in bins lies in
        (−1, bins + 1) even after rounding: truncation is its floor clamped to the grid once each row gets
        one overflow bin (the top edge itself), folded into its last bin. No clamp pass is needed.
        """
        dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
        lo_hi, lo_lo, exact, width, offset = self._bin_params(dtype, row_axis)
        per_row = self.bins + 1
        axis = 1 - row_axis
        step = max(1, CHUNK // self.rows)
        for start in range(0, values.shape[axis], step):
            part = values.narrow(axis, start, min(step, values.shape[axis] - start))
            v = part.to(dtype) - lo_hi  # a new tensor: the in-place steps below never touch the data
            if not exact:
                v.sub_(lo_lo)
            idx = v.div_(width).to(torch.int32)  # int32 holds R·(bins + 1)
            if self.rows > 1:
                idx.add_(offset)
            counts = torch.bincount(idx.flatten(), minlength=self.rows * per_row).view(self.rows, per_row)
            self.hist += counts[:, : self.bins]
            self.hist[:, -1] += counts[:, self.bins]

    def _bin_params(self, dtype: torch.dtype, row_axis: int) -> tuple:
        """The grid in ``dtype``, shaped for rows on ``row_axis``: ``lo`` in two parts (the second is what
        ``dtype`` rounds off; ``exact`` when it is 0), the width, the flat-index offset of every row. Kept
        until the grid changes (a batch then costs no small tensor ops for them)."""
        key = (dtype, row_axis)
        if key not in self._params:
            shape = (-1, 1) if row_axis == 0 else (1, -1)
            lo_hi = self.lo.to(dtype)
            lo_lo = (self.lo - lo_hi.double()).to(dtype).reshape(shape)
            rows = torch.arange(self.rows, device=self.lo.device, dtype=torch.int32)
            offset = (rows * (self.bins + 1)).reshape(shape)
            width = self.width.to(dtype).reshape(shape)
            self._params[key] = (lo_hi.reshape(shape), lo_lo, not bool(lo_lo.any()), width, offset)
        return self._params[key]

    def _start(self, r_min: torch.Tensor, r_max: torch.Tensor) -> None:
        # a constant first batch still gets a valid (tiny) grid; the first real spread re-bins once
        span = torch.maximum(torch.maximum(r_max - r_min, r_min.abs() * 1e-6), torch.full_like(r_min, 1e-12))
        self.lo, self.width, self._params = r_min.clone(), span / self.bins, {}
        self.hist = torch.zeros(self.rows, self.bins, dtype=torch.float64, device=r_min.device)

    def _grow(self, r_min: torch.Tensor, r_max: torch.Tensor) -> None:
        top = self.lo + self.bins * self.width
        need_lo, need_hi = torch.minimum(r_min, self.lo), torch.maximum(r_max, top)
        down, grow = need_lo < self.lo, (need_lo < self.lo) | (need_hi > top)
        if not bool(grow.any()):
            return
        shift = torch.ceil((self.lo - need_lo) / self.width)  # whole old bins added below
        new_lo = self.lo - shift * self.width
        # merge 2^k old bins per new bin; k ≥ 1 for growing rows, so the range at least doubles
        k = torch.ceil(torch.log2((need_hi - new_lo) / (self.bins * self.width))).clamp_min(1)
        k = torch.where(grow, k, torch.zeros_like(k))
        short = new_lo + self.bins * self.width * 2**k < need_hi
        while bool(short.any()):  # guard against log2 rounding
            k, short = k + short.double(), short & (new_lo + self.bins * self.width * 2 ** (k + 1) < need_hi)
        # a row that grew downwards leaves half of its free room below too
        room = torch.floor((new_lo + self.bins * self.width * 2**k - need_hi) / self.width)
        extra = torch.where(down, torch.floor(room / 2), torch.zeros_like(room))
        shift, new_lo = shift + extra, new_lo - extra * self.width
        old = torch.arange(self.bins, device=self.hist.device, dtype=torch.int64)
        target = (old[None] + shift.long()[:, None]) >> k.long()[:, None]  # (R, bins): old bin -> new bin
        target += torch.arange(self.rows, device=self.hist.device)[:, None] * self.bins
        merged = torch.zeros(self.rows * self.bins, dtype=torch.float64, device=self.hist.device)
        merged.index_add_(0, target.flatten(), self.hist.flatten())
        self.hist, self.lo, self.width = merged.view(self.rows, self.bins), new_lo, self.width * 2**k
        self._params = {}  # the grid changed

    def _require_data(self, histogram: bool = True) -> None:
        if self.min is None:
            raise DataError(f"quantizer {self.name or '<unnamed>'}: no data observed; run calibration first")
        if histogram and not self.histogram:
            raise ConfigError(f"quantizer {self.name or '<unnamed>'}: statistics kept min/max only (observer minmax)")

    def grid(self) -> torch.Tensor:
        """The bin edges of every row (R, bins + 1), unclipped."""
        self._require_data()
        steps = torch.arange(self.bins + 1, dtype=torch.float64, device=self.hist.device)
        return self.lo[:, None] + self.width[:, None] * steps

    def clipped_grid(self) -> torch.Tensor:
        """The bin edges of every row (R, bins + 1), clipped to each row's exact min/max."""
        return torch.minimum(torch.maximum(self.grid(), self.min[:, None]), self.max[:, None])

    def bin_edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lower, upper) edges of every bin (R, bins), clipped to each row's exact min/max."""
        edges = self.clipped_grid()
        return edges[:, :-1], edges[:, 1:]

    def quantile(self, q: float) -> torch.Tensor:
        """Per-row quantile (R,), interpolated linearly inside the bin where the CDF crosses ``q``."""
        lower, upper = self.bin_edges()
        cdf = self.hist.cumsum(1)
        target = (q * cdf[:, -1:]).clamp_min(1e-12)  # q = 0 lands in the first occupied bin
        i = (cdf < target).sum(1, keepdim=True).clamp(max=self.bins - 1)
        before = cdf.gather(1, i) - self.hist.gather(1, i)
        frac = ((target - before) / self.hist.gather(1, i).clamp_min(1e-12)).clamp(0, 1)
        return (lower.gather(1, i) + frac * (upper.gather(1, i) - lower.gather(1, i)))[:, 0]

    def sq_error(self, scale: torch.Tensor, zero: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
        """Squared quantization error of all observed values, per row, for per-row qparams (R,), or for T
        candidates per row at once, (T, R) -> (T, R)."""
        edges = self.clipped_grid()
        qp = [torch.as_tensor(t, device=edges.device).double() for t in (scale, zero, qmin, qmax)]
        shape = torch.broadcast_shapes(*(t.shape for t in qp), (self.rows,))
        return edges_sq_error(edges, self.hist, *(t.expand(shape)[..., None] for t in qp))

    def search(
        self, observer: str, bits: int | torch.Tensor, symmetric: bool, percentile: float = 99.99
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row range (R,) float64 for ``observer`` (see :func:`search_range`); min-max is exact."""
        self._require_data(histogram=observer != "minmax")
        lo, hi = self.min.clone(), self.max.clone()
        if observer == "minmax":
            return lo, hi
        if observer == "percentile":
            return self.quantile(1 - percentile / 100), self.quantile(percentile / 100)
        bits = torch.as_tensor(bits, device=lo.device).expand_as(lo)
        ratios = torch.tensor(_ratios(observer), dtype=torch.float64, device=lo.device)[:, None]  # (T, 1)
        cand_lo, cand_hi = lo * ratios, hi * ratios  # (T, R): every candidate of every row
        step = max(1, SEARCH_CHUNK // (self.rows * self.bins))
        err = torch.cat(
            [
                self.sq_error(*qparams_from_range(cand_lo[i : i + step], cand_hi[i : i + step], bits, symmetric))
                for i in range(0, len(ratios), step)
            ]
        ).nan_to_num(nan=math.inf)
        best = err.argmin(0, keepdim=True)  # the first of equal errors: ties keep the earlier ratio (min-max first)
        return cand_lo.gather(0, best)[0], cand_hi.gather(0, best)[0]


class HistogramObserver(RowHistogram):
    """Streaming per-tensor statistics (2048 bins by default; min/max only with ``histogram=False``)."""

    def __init__(self, name: str = "", bins: int = 2048, histogram: bool = True):
        super().__init__(1, name, bins, histogram)

    def update(self, x: torch.Tensor) -> None:
        """Add all values of ``x``."""
        x = x.detach()
        if self.histogram:
            self.update_rows(x.reshape(1, -1))
        elif x.numel():  # min/max straight from x, strided or not: no copy
            lo, hi = x.aminmax()
            self._extend(lo.reshape(1), hi.reshape(1))
            self.count += x.numel()

    def range(
        self, observer: str, bits: int, symmetric: bool, percentile: float = 99.99
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)`` as 0-dim float32 tensors; min-max is exact, the others use the histogram."""
        lo, hi = self.search(observer, bits, symmetric, percentile)
        return lo[0].float(), hi[0].float()


class ChannelHistogramObserver(RowHistogram):
    """Streaming per-channel statistics, channels on the last axis (PTF; 512 bins per channel)."""

    def __init__(self, num_channels: int, name: str = "", bins: int = 512):
        super().__init__(num_channels, name, bins)

    def update(self, x: torch.Tensor) -> None:
        """Add ``x`` (…, C)."""
        if x.dim() == 0 or x.shape[-1] != self.rows:
            raise DataError(
                f"quantizer {self.name or '<unnamed>'}: expected {self.rows} channels on the last "
                f"axis, got shape {tuple(x.shape)}"
            )
        tokens = x.detach().reshape(-1, self.rows)  # (tokens, C)
        if not tokens.numel():
            return
        self._extend(tokens.amin(dim=0), tokens.amax(dim=0))
        if self.histogram:
            self._add(tokens, row_axis=1)  # binned in this layout: no transposed copy
        self.count += tokens.shape[0]

    def ptf_params(
        self, bits: int, max_alpha: int = 3, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """FQ-ViT power-of-two factors (Lin et al., IJCAI 2022, arXiv:2111.13824).

        The layer range (all channels, or ``[lo, hi]`` if given; widened to include 0) gives ``s_layer`` and
        the zero point ``z``; channel ``c`` then takes the ``α_c ∈ {0..max_alpha}`` whose scale
        ``s_layer/2^max_alpha·2^α`` gives the least squared error on its histogram (ties: the smaller α).
        As in FQ-ViT's code, all channels share ``z``.

        Returns:
            ``(s, z, alpha)``: ``s = s_layer / 2^max_alpha`` and ``z`` (0-dim float32), ``alpha`` (C,) int64.
        """
        self._require_data()
        qmin, qmax = qrange(bits, symmetric=False)
        lo = (self.min.min() if lo is None else torch.as_tensor(lo, dtype=torch.float64)).clamp(max=0.0)
        hi = (self.max.max() if hi is None else torch.as_tensor(hi, dtype=torch.float64)).clamp(min=0.0)
        s_layer = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS_SCALE)
        zero = (qmin - torch.round(lo / s_layer)).clamp(qmin, qmax)
        base = s_layer / 2**max_alpha
        ones = torch.ones(self.rows, dtype=torch.float64, device=self.hist.device)
        errors = torch.stack(
            [self.sq_error(ones * base * 2**a, ones * zero, ones * qmin, ones * qmax) for a in range(max_alpha + 1)]
        )  # (α, C)
        return base.float(), zero.float(), errors.argmin(0)  # argmin keeps the first (smallest) α on ties


# ---- leading tokens apart --------------------------------------------------------------------------
TOKEN_SPLIT_RATIO = 2.0
"""A leading token is apart when its range is over this factor wider or narrower than the other tokens'."""


def _span(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Width of ``[lo, hi]`` widened to include 0 (what an asymmetric scale covers)."""
    return hi.clamp(min=0.0) - lo.clamp(max=0.0)


def _count_below(hist: RowHistogram, value: torch.Tensor) -> torch.Tensor:
    """Per row, the number of observed values ≤ ``value`` (uniform density inside each bin)."""
    lower, upper = hist.bin_edges()
    width = upper - lower
    frac = torch.where(width > 0, (value - lower) / width.clamp_min(1e-300), (upper <= value).double())
    return (hist.hist * frac.clamp(0.0, 1.0)).sum(1)


def group_search(
    parts: list[tuple[RowHistogram, slice]], observer: str, bits: int, symmetric: bool, percentile: float = 99.99
) -> tuple[torch.Tensor, torch.Tensor]:
    """One range ``(lo, hi)`` (0-dim float64) for the values of several histogram rows together.

    ``parts`` lists ``(histogram, rows)``; the search is that of :func:`search_range` on the union of
    their values: ``minmax`` exact, ``percentile`` by bisection on the summed CDFs, ``omse``/``mse``
    by the least squared error summed over the rows.
    """
    name = parts[0][0].name if parts else ""
    parts = [(h, rows) for h, rows in parts if h.has_data and h.min[rows].numel()]
    if not parts:
        raise DataError(f"quantizer {name or '<unnamed>'}: no data observed; run calibration first")
    lo = torch.stack([h.min[rows].min() for h, rows in parts]).min()
    hi = torch.stack([h.max[rows].max() for h, rows in parts]).max()
    if observer == "minmax":
        return lo, hi
    if observer == "percentile":
        return _group_quantile(parts, lo, hi, 1 - percentile / 100), _group_quantile(parts, lo, hi, percentile / 100)
    best, best_err = (lo, hi), math.inf
    for r in _ratios(observer):
        qp = qparams_from_range(lo * r, hi * r, bits, symmetric)
        err = sum(float(h.sq_error(*qp)[rows].sum()) for h, rows in parts)
        if err < best_err:
            best, best_err = (lo * r, hi * r), err
    return best


def _group_quantile(parts: list, lo: torch.Tensor, hi: torch.Tensor, q: float) -> torch.Tensor:
    total = sum(float(h.hist[rows].sum()) for h, rows in parts)
    a, b = lo.clone(), hi.clone()
    for _ in range(60):  # bisection on the value: 60 halvings reach float64 resolution
        mid = (a + b) / 2
        below = sum(float(_count_below(h, mid)[rows].sum()) for h, rows in parts)
        a, b = (mid, b) if below < q * total else (a, mid)
    return (a + b) / 2


class TokenObserver:
    """Statistics of activations ``(B, N, C)`` with the leading token positions kept apart.

    Class, distillation and register tokens sit in front of the patch tokens and can differ from them
    in scale by orders of magnitude (Darcet, Oquab, Mairal, Bojanowski, "Vision Transformers Need
    Registers", ICLR 2024, arXiv:2309.16588): one shared scale then rounds a small token to a constant,
    or lets a large one coarsen every other token. Each of the first ``k = min(max_tokens, N // 2)``
    positions gets its own histogram (axis 1); all other values go to ``tail`` (a
    :class:`HistogramObserver`, or a :class:`ChannelHistogramObserver` for PTF; the leading positions keep
    histograms when ``histogram`` is True, by default when ``tail`` does). Inputs that are not
    3-D (no token axis: ``(B, C)``, or Swin's ``(B, H, W, C)``, which has no prefix tokens) go to ``tail`` only.

    After calibration, :meth:`split` gives ``P``: the leading positions up to the last one whose range
    is more than :data:`TOKEN_SPLIT_RATIO` times wider or narrower than the tail's; each of them gets a
    scale of its own, the others share the tail's.
    """

    def __init__(
        self, max_tokens: int, tail: RowHistogram, name: str = "", bins: int = 512, histogram: bool | None = None
    ):
        self.max_tokens, self.tail, self.name, self.bins = max_tokens, tail, name, bins
        self.histogram = tail.histogram if histogram is None else histogram  # the leading tokens' histograms
        self.k: int | None = None
        self.lead: RowHistogram | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add ``x``; its axis 1 holds the tokens when it is 3-D."""
        if x.dim() == 3 and self.k is None:
            self.k = min(self.max_tokens, x.shape[1] // 2)
            self.lead = RowHistogram(self.k, self.name, self.bins, self.histogram) if self.k else None
        if x.dim() != 3 or not self.k or x.shape[1] < 2 * self.k:  # no (or too few) tokens to set apart
            self.tail.update(x)
            return
        self.lead.update_rows(x[:, : self.k].detach().transpose(0, 1).reshape(self.k, -1))
        self.tail.update(x[:, self.k :])

    def split(self) -> int:
        """``P``: how many leading positions get a scale of their own (class docstring)."""
        if not self.tail.has_data:
            raise DataError(f"quantizer {self.name or '<unnamed>'}: no data observed; run calibration first")
        if self.lead is None or not self.lead.has_data:
            return 0
        ref = _span(self.tail.min.min(), self.tail.max.max())
        span = _span(self.lead.min, self.lead.max)
        apart = (span * TOKEN_SPLIT_RATIO < ref) | (span > TOKEN_SPLIT_RATIO * ref)
        index = torch.nonzero(apart)
        return int(index.max()) + 1 if index.numel() else 0

    def rest_parts(self, p: int) -> list[tuple[RowHistogram, slice]]:
        """The histogram rows of the tokens that share one scale when ``p`` positions are apart."""
        parts = [(self.tail, slice(None))]
        if self.lead is not None and self.lead.has_data and p < self.k:
            parts.append((self.lead, slice(p, None)))
        return parts

    def lead_ranges(
        self, p: int, observer: str, bits: int, symmetric: bool, percentile: float = 99.99
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ranges ``(lo, hi)``, each (p,) float64, of the first ``p`` positions, each on its own."""
        lo, hi = self.lead.search(observer, bits, symmetric, percentile)
        return lo[:p], hi[:p]
