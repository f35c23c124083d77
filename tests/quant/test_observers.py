"""Range estimation (min-max, percentile, OMSE, MSE): whole-tensor searches and streaming histogram observers."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import fake_quant
from vitcompress.quant.observers import (
    MSE_RATIOS,
    OMSE_RATIOS,
    ChannelHistogramObserver,
    HistogramObserver,
    RowHistogram,
    hist_sq_error,
    qparams_from_range,
    search_range,
    tensor_range,
    to_rows,
)

batch = st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=200)


pytestmark = pytest.mark.usefixtures("one_thread")


def _mse(x, lo, hi, bits, symmetric=False):
    """Mean squared quantization error of ``x`` for the range [lo, hi] (float64)."""
    x = x.double()
    scale, zero, qmin, qmax = qparams_from_range(
        torch.as_tensor(lo).double(), torch.as_tensor(hi).double(), bits, symmetric
    )
    return (fake_quant(x, scale, zero, qmin, qmax) - x).pow(2).mean().item()


def test_qparams_golden_values():
    scale, zero, qmin, qmax = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), 8, False)
    assert scale.item() == pytest.approx(4 / 255, rel=1e-6) and zero.item() == 64  # 0 − round(−1/(4/255)) = 64
    assert (qmin.item(), qmax.item()) == (0, 255)
    scale, zero, _, _ = qparams_from_range(torch.tensor(-1.0), torch.tensor(3.0), 4, True)
    assert scale.item() == pytest.approx(3 / 7, rel=1e-6) and zero.item() == 0
    # asymmetric ranges are widened to include 0, so zero is exactly representable
    scale, zero, _, _ = qparams_from_range(torch.tensor(2.0), torch.tensor(4.0), 8, False)
    assert scale.item() == pytest.approx(4 / 255, rel=1e-6) and zero.item() == 0
    # an all-zero range still gives a valid (tiny) scale
    scale, _, _, _ = qparams_from_range(torch.tensor(0.0), torch.tensor(0.0), 8, True)
    assert scale.item() > 0


def test_rows_per_tensor_channel_group():
    x = torch.arange(24.0).reshape(4, 6)
    assert to_rows(x, "tensor").shape == (1, 24)
    assert torch.equal(to_rows(x, "channel", axis=1)[0], x[:, 0])
    assert torch.equal(to_rows(x, "group", axis=0, group_size=2)[1], x[2:4].flatten())
    with pytest.raises(ConfigError, match="group_size"):
        to_rows(x, "group", axis=0, group_size=3)
    lo, hi = tensor_range(x, "minmax", 8, True, "group", axis=0, group_size=2)
    assert lo.tolist() == [0, 12] and hi.tolist() == [11, 23]
    lo, hi = tensor_range(x, "minmax", 8, True)
    assert lo.dim() == 0 and (lo.item(), hi.item()) == (0, 23)


def test_percentile_matches_torch_quantile():
    torch.manual_seed(0)
    rows = torch.randn(3, 5000, dtype=torch.float64)
    lo, hi = search_range(rows, 8, False, "percentile", 99.0)
    ref = torch.quantile(rows, torch.tensor([0.01, 0.99], dtype=torch.float64), dim=1)
    assert torch.allclose(lo, ref[0], rtol=0, atol=1e-12) and torch.allclose(hi, ref[1], rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=2, max_size=300),
    st.sampled_from([2, 3, 4, 8]),
    st.booleans(),
    st.sampled_from(["omse", "mse"]),
)
def test_search_never_worse_than_minmax(values, bits, symmetric, observer):
    x = torch.tensor(values, dtype=torch.float64)
    lo, hi = search_range(x[None], bits, symmetric, observer)
    mm_lo, mm_hi = x.min(), x.max()
    # same float64 error model as the search: equal up to summation order (relative 1e-9)
    assert _mse(x, lo[0], hi[0], bits, symmetric) <= _mse(x, mm_lo, mm_hi, bits, symmetric) * (1 + 1e-9) + 1e-300
    ratios = OMSE_RATIOS if observer == "omse" else MSE_RATIOS
    assert any(lo[0] == mm_lo * r and hi[0] == mm_hi * r for r in ratios)  # a candidate: [min, max]·r


def test_omse_candidates_and_outlier_clipping():
    assert len(OMSE_RATIOS) == 90 and OMSE_RATIOS[0] == 1.0 and OMSE_RATIOS[-1] == pytest.approx(0.11)
    torch.manual_seed(1)
    x = torch.cat([torch.randn(10000), torch.tensor([25.0])])  # one outlier
    lo, hi = search_range(x[None], 4, False, "omse")
    assert hi[0] < 25.0  # the outlier is clipped
    ratio = hi[0] / 25.0
    assert min(abs(ratio - r) for r in OMSE_RATIOS) < 1e-6  # one of the 1 % steps (float32 product: 1e-6)
    assert lo[0].item() == pytest.approx((x.min() * ratio).item(), rel=1e-6)  # min and max shrink together


# ---- streaming -----------------------------------------------------------------------------------
@settings(max_examples=50, deadline=None)
@given(st.lists(batch, min_size=1, max_size=6))
def test_streaming_minmax_exact_and_counts_conserved(batches):
    obs = HistogramObserver("h", bins=64)
    for b in batches:
        obs.update(torch.tensor(b))
    full = torch.cat([torch.tensor(b) for b in batches])
    lo, hi = obs.range("minmax", 8, False)
    assert lo == full.min() and hi == full.max()  # exact, not from the histogram
    assert obs.hist.sum().item() == full.numel() == obs.count  # re-binning never loses a count
    assert obs.hist.shape == (1, 64)  # memory independent of the amount of data


@settings(max_examples=40, deadline=None)
@given(st.lists(batch, min_size=2, max_size=6))
def test_rebinning_moves_no_count_across_an_edge(batches):
    obs = HistogramObserver("h", bins=32)
    for b in batches:
        obs.update(torch.tensor(b))
    full = torch.cat([torch.tensor(b) for b in batches]).double()
    edges = obs.grid()[0]
    streamed = torch.cat([torch.zeros(1, dtype=torch.float64), obs.hist[0].cumsum(0)])
    exact = (full[None] < edges[:, None]).sum(1).double()
    exact[-1] = full.numel()  # the top edge is inclusive
    # values within float rounding (1e-6 of the grid span) of an edge may land on either side
    slack = ((full[None] - edges[:, None]).abs() <= 1e-6 * (edges[-1] - edges[0])).sum(1).double()
    assert ((streamed - exact).abs() <= slack).all()


def _growing_batches():
    torch.manual_seed(0)
    return [torch.randn(4096) * (1 + i) + i for i in range(5)]  # the range grows with every batch


def test_streaming_percentile_and_search_close_to_full_data():
    batches = _growing_batches()
    full = torch.cat(batches)
    obs = HistogramObserver("h")
    for b in batches:
        obs.update(b)
    span = (full.max() - full.min()).item()
    for p in (99.0, 99.9, 99.99):
        lo, hi = obs.range("percentile", 8, False, percentile=p)
        ref = torch.quantile(full, torch.tensor([1 - p / 100, p / 100]))
        # histogram interpolation (2048 bins over at most twice the data range): within 1 % of the range
        assert abs(lo - ref[0]) < 0.01 * span and abs(hi - ref[1]) < 0.01 * span
    for observer in ("omse", "mse"):
        for bits in (4, 8):
            lo, hi = obs.range(observer, bits, False)
            ref_lo, ref_hi = search_range(full[None].double(), bits, False, observer)
            assert abs(hi - ref_hi[0]) < 0.02 * span and abs(lo - ref_lo[0]) < 0.02 * span  # 2 % of the range
            # its true error on the full data is within 1 % of the exact search's, and below min-max's
            mse = _mse(full, lo, hi, bits)
            assert mse <= _mse(full, ref_lo[0], ref_hi[0], bits) * 1.01
            assert mse <= _mse(full, full.min(), full.max(), bits)


def test_histogram_error_model_matches_brute_force():
    lower = torch.tensor([[0.0, 0.37, -2.0, 1.0]], dtype=torch.float64)
    upper = torch.tensor([[0.37, 0.9, 5.0, 1.0]], dtype=torch.float64)  # the last bin is a point mass
    counts = torch.tensor([[1.0, 2.0, 1.0, 3.0]], dtype=torch.float64)
    s, z, qmin, qmax = (torch.tensor([[v]], dtype=torch.float64) for v in (0.1, 3.0, 0.0, 15.0))
    model = hist_sq_error(lower, upper, counts, s, z, qmin, qmax).item()
    brute = 0.0
    for a, b, n in zip(lower[0], upper[0], counts[0]):
        x = torch.linspace(float(a), float(b), 200_001, dtype=torch.float64)
        brute += float(n) * (fake_quant(x, s[0, 0], z[0, 0], 0, 15) - x).pow(2).mean().item()
    assert model == pytest.approx(brute, rel=1e-4)  # brute force on a 200k-point grid: 1e-4


def test_channel_observer_minmax_and_ptf_alpha():
    torch.manual_seed(0)
    obs = ChannelHistogramObserver(8, "ln")
    batches = [torch.randn(4, 64, 8) for _ in range(3)]
    for b in batches:
        b[..., 0] *= 8.0  # channel 0 has 8× the range of the others
        obs.update(b)
    full = torch.cat([b.reshape(-1, 8) for b in batches])
    assert torch.equal(obs.min.float(), full.amin(0)) and torch.equal(obs.max.float(), full.amax(0))
    scale, zero, alpha = obs.ptf_params(8)
    assert alpha[0] == 3 and (alpha[1:] < 3).all()
    lo, hi = min(full.min().item(), 0.0), max(full.max().item(), 0.0)
    assert scale.item() == pytest.approx((hi - lo) / 255 / 8, rel=1e-5)  # s = s_layer / 8
    assert obs.hist.shape == (8, 512)


def test_row_histogram_per_row_ranges():
    torch.manual_seed(0)
    rows = [torch.randn(3, 1000) * torch.tensor([[1.0], [10.0], [0.1]]) for _ in range(3)]
    obs = RowHistogram(3, "rows", bins=512)
    for r in rows:
        obs.update_rows(r)
    full = torch.cat(rows, 1)
    lo, hi = obs.search("minmax", 8, True)
    assert torch.equal(lo.float(), full.amin(1)) and torch.equal(hi.float(), full.amax(1))
    lo, hi = obs.search("omse", 4, True)
    ref_lo, ref_hi = search_range(full, 4, True, "omse")
    span = (full.amax(1) - full.amin(1)).double()
    # every row has its own grid: within 2 % of the row's own range, whatever its magnitude
    assert ((hi - ref_hi.double()).abs() < 0.02 * span).all() and ((lo - ref_lo.double()).abs() < 0.02 * span).all()


def test_errors_name_the_quantizer():
    obs = HistogramObserver("blocks.0.norm1.input")
    with pytest.raises(DataError, match="blocks.0.norm1.input.*no data"):
        obs.range("omse", 8, False)
    with pytest.raises(DataError, match="blocks.0.norm1.input.*NaN"):
        obs.update(torch.tensor([0.0, float("nan")]))
    with pytest.raises(DataError, match="blocks.0.norm1.input.*NaN or Inf"):
        obs.update(torch.tensor([float("inf")]))
    ch = ChannelHistogramObserver(4, "ln")
    with pytest.raises(DataError, match="ln.*4 channels"):
        ch.update(torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="observer"):
        search_range(torch.zeros(1, 3), 8, True, "kl")


def test_constant_and_tiny_data():
    obs = HistogramObserver("c")
    obs.update(torch.full((10,), 3.0))
    lo, hi = obs.range("omse", 8, False)
    assert (lo.item(), hi.item()) == (3.0, 3.0)
    obs.update(torch.tensor([-1e3]))  # a huge jump in range re-bins in one step
    assert obs.range("minmax", 8, False)[0].item() == -1e3 and obs.hist.sum().item() == 11
