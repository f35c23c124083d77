"""The fast calibration paths give the statistics of the reference ones.

- float32 binning (two-part lower edge) against float64 binning on the same grid: a value may only move to a
  neighbouring bin, and only when it lies within 1e-4 of a bin width of an edge;
- chunked binning equals one-shot binning bit for bit;
- min/max-only statistics (observer ``minmax``) give the same ranges as the histogram ones;
- the vectorized range search equals the loop over candidate ratios it replaced;
- the edge form of the error model equals the per-bin form bit for bit;
- calibration state does not grow with the number of images;
- calibration runs the fused attention kernel when the probabilities keep no statistics (log2).
"""

import pytest
import torch

from tiny_models import tiny_swin, tiny_vit
from vitcompress.config import QuantSpec, get_preset
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import observers
from vitcompress.quant.observers import (
    ChannelHistogramObserver,
    HistogramObserver,
    RowHistogram,
    TokenObserver,
    _ratios,
    edges_sq_error,
    hist_sq_error,
    qparams_from_range,
)
from vitcompress.quant.quantizer import Quantizer, UniformQuantizer
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("offset, spread", [(0.0, 1.0), (1000.0, 0.01), (-3.0, 1e4)])
def test_float32_binning_matches_float64_binning(offset, spread):
    torch.manual_seed(0)
    obs = HistogramObserver("h")
    obs.update(torch.tensor([offset - 4 * spread, offset + 4 * spread]))  # fixes the grid
    x = (torch.randn(50_000) * spread + offset).clamp(offset - 4 * spread, offset + 4 * spread)
    before = obs.hist.clone()
    obs.update(x)  # inside the grid: no re-binning
    added = (obs.hist - before)[0]
    pos = (x.double() - obs.lo) / obs.width  # float64 reference, in bins
    ref = torch.bincount(pos.floor().clamp(0, obs.bins - 1).long(), minlength=obs.bins).double()
    assert added.sum() == ref.sum() == x.numel()
    near_edge = ((pos - pos.round()).abs() < 1e-4).sum().item()  # within 1e-4 bin width of an edge
    assert (added.cumsum(0) - ref.cumsum(0)).abs().max().item() <= near_edge


def test_chunked_binning_equals_one_shot(monkeypatch):
    torch.manual_seed(0)
    batches = [torch.randn(4, 10, 6) * (1 + i) for i in range(3)]
    full = [HistogramObserver("t"), ChannelHistogramObserver(6, "c"), RowHistogram(4, "r")]
    for obs in full:
        for b in batches:
            obs.update_rows(b.reshape(4, -1)) if type(obs) is RowHistogram else obs.update(b)
    monkeypatch.setattr(observers, "CHUNK", 7)
    chunked = [HistogramObserver("t"), ChannelHistogramObserver(6, "c"), RowHistogram(4, "r")]
    for obs in chunked:
        for b in batches:
            obs.update_rows(b.reshape(4, -1)) if type(obs) is RowHistogram else obs.update(b)
    for a, b in zip(full, chunked):
        assert torch.equal(a.hist, b.hist) and torch.equal(a.lo, b.lo) and a.count == b.count


def test_minmax_statistics_need_no_histogram():
    torch.manual_seed(0)
    batches = [torch.randn(2, 20, 8) * (i + 1) for i in range(3)]
    batches[0][:, 0] *= 30.0  # a class token apart
    with_hist = TokenObserver(4, HistogramObserver("h"), "h")
    bare = TokenObserver(4, HistogramObserver("h", histogram=False), "h")
    for b in batches:
        with_hist.update(b)
        bare.update(b)
    assert bare.tail.hist is None and bare.lead.hist is None
    assert bare.split() == with_hist.split() == 1
    for p in (0, 1):
        a = observers.group_search(bare.rest_parts(p), "minmax", 8, False)
        b = observers.group_search(with_hist.rest_parts(p), "minmax", 8, False)
        assert torch.equal(torch.stack(a), torch.stack(b))
    with pytest.raises(ConfigError, match="h: statistics kept min/max only"):
        bare.tail.search("omse", 8, False)
    with pytest.raises(DataError, match="h.*NaN or Inf"):
        bare.update(torch.tensor([[[1.0, float("inf")]]]))


@pytest.mark.parametrize("observer", ["minmax", "omse"])
def test_quantizer_ranges_equal_with_and_without_histogram(observer):
    torch.manual_seed(0)
    spec = QuantSpec(8, "asymmetric", observer=observer)
    fast, full = UniformQuantizer(spec, "a"), UniformQuantizer(spec, "a")
    full._hist = HistogramObserver("a")  # the statistics every observer used to keep: a histogram
    for _ in range(3):
        x = torch.randn(2, 16, 8)
        fast.observe(x)
        full.observe(x)
    fast.compute_qparams()
    full.compute_qparams()
    assert (fast._hist.hist is None) == (observer == "minmax")
    assert torch.equal(fast.scale, full.scale) and torch.equal(fast.zero_point, full.zero_point)


@pytest.mark.parametrize("observer", ["omse", "mse"])
@pytest.mark.parametrize("rows", [1, 5])
def test_vectorized_search_equals_the_ratio_loop(observer, rows):
    torch.manual_seed(0)
    obs = RowHistogram(rows, "r", bins=256)
    for i in range(3):
        obs.update_rows(torch.randn(rows, 500) ** 3 * (i + 1))
    bits, lo, hi = 4, obs.min, obs.max
    best_lo, best_hi, best_err = lo.clone(), hi.clone(), torch.full_like(lo, float("inf"))
    for r in _ratios(observer):  # the loop the search replaced: strictly better only, so ties keep the earlier ratio
        err = obs.sq_error(*qparams_from_range(lo * r, hi * r, bits, False))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_lo, best_hi = torch.where(better, lo * r, best_lo), torch.where(better, hi * r, best_hi)
    got_lo, got_hi = obs.search(observer, bits, False)
    assert torch.equal(got_lo, best_lo) and torch.equal(got_hi, best_hi)


def test_edge_error_model_equals_the_per_bin_one():
    torch.manual_seed(0)
    obs = RowHistogram(3, "r", bins=64)
    obs.update_rows(torch.randn(3, 400))
    qp = qparams_from_range(obs.min * 0.8, obs.max * 0.8, 4, False)
    col = [t.double().reshape(-1, 1) for t in qp]
    lower, upper = obs.bin_edges()
    assert torch.equal(edges_sq_error(obs.clipped_grid(), obs.hist, *col), hist_sq_error(lower, upper, obs.hist, *col))


def _observer_state_numel(model) -> int:
    total = 0
    for m in model.modules():
        for stats in (getattr(m, "_hist", None), getattr(m, "_obs", None), getattr(m, "_exact", None)):
            parts = [stats, getattr(stats, "tail", None), getattr(stats, "lead", None)]
            for part in parts:
                if isinstance(part, torch.Tensor):
                    total += part.numel()
                elif part is not None:
                    total += sum(t.numel() for t in vars(part).values() if isinstance(t, torch.Tensor))
    return total


@pytest.mark.parametrize("preset", ["w8a8", "fqvit-w4a8"])
def test_calibration_state_does_not_grow_with_images(preset):
    torch.manual_seed(0)
    sizes = []
    for n in (2, 12):
        model = tiny_vit().eval()
        quantize_(model, get_preset(preset), list(torch.randn(n, 3, 32, 32).split(2)))
        sizes.append(_observer_state_numel(model))
    assert sizes[0] == sizes[1] > 0  # statistics stream: the same state after 1 and 6 batches


def _quantized(model_fn, explicit: bool, monkeypatch) -> tuple[torch.nn.Module, int]:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k)
    )
    if explicit:  # the explicit softmax path for every attention, as before the fused calibration path existed
        monkeypatch.setattr(Quantizer, "passes_through", property(lambda self: not self.active))
    torch.manual_seed(0)
    model = model_fn().eval()
    x = torch.randn(8, model.patch_embed.proj.in_channels, 32, 32)
    quantize_(model, get_preset("fqvit-w4a8"), list(x.split(4)))
    monkeypatch.undo()
    return model, len(calls)


@pytest.mark.parametrize("model_fn", [tiny_vit, tiny_swin])
def test_calibration_runs_fused_attention_when_the_probabilities_keep_no_statistics(model_fn, monkeypatch):
    fast, fused_calls = _quantized(model_fn, False, monkeypatch)
    slow, explicit_calls = _quantized(model_fn, True, monkeypatch)
    # log2 probabilities: the fused kernel ran in calibration (both counts include prepare's traced float forward)
    assert fused_calls > explicit_calls
    scales = {k: v for k, v in fast.state_dict().items() if k.endswith("scale")}
    for name, ref in slow.state_dict().items():
        if name in scales:  # float rounding of the fused kernel: a range may move one OMSE step (1 %), no more
            assert torch.allclose(scales[name], ref, rtol=0.0101, atol=0), name
    x = torch.randn(4, fast.patch_embed.proj.in_channels, 32, 32)
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(fast(x).flatten(), slow(x).flatten(), dim=0)
    assert cos > 0.999
