import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcompress.config import QuantSpec
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import correct_bias, fake_quant, log2_fake_quant, make_quantizer, qrange
from vitcompress.quant.observers import HistogramObserver, search_range

finite = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=64), st.integers(2, 8), st.booleans())
def test_fake_quant_idempotent_and_in_range(values, bits, symmetric):
    x = torch.tensor(values)
    q = make_quantizer(QuantSpec(bits, "symmetric" if symmetric else "asymmetric"), "t")
    q.observe(x)
    q.compute_qparams()
    y = q(x)
    assert torch.equal(q(y), y)  # quantize∘dequantize is idempotent on the grid
    qmin, qmax = qrange(bits, symmetric)
    codes = y / q.scale + q.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the grid (float32 rounding: 1e-3 codes)
    assert codes.min() >= qmin - 1e-3 and codes.max() <= qmax + 1e-3


def test_module_equals_functional_reference_exactly():
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    q = make_quantizer(QuantSpec(4, "symmetric", "channel"), "w", 0, 16)
    q.observe(w)
    q.compute_qparams()
    qmin, qmax = qrange(4, True)
    assert torch.equal(q(w), fake_quant(w, q.scale[:, None], q.zero_point[:, None], qmin, qmax))
    assert torch.allclose(q.scale, w.abs().amax(1) / qmax)  # min-max symmetric, rtol 1e-5


def test_per_group_scales_and_bits_are_honoured():
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q = make_quantizer(QuantSpec(4, "symmetric", "group", group_size=2), "w", 0, 8)
    q.set_group_bits([2, 8, 4, 3])
    q.observe(w)
    q.compute_qparams()
    y = q(w)
    for group, bits in enumerate([2, 8, 4, 3]):
        rows = y[2 * group : 2 * group + 2]
        assert rows.unique().numel() <= 2**bits  # one shared grid per group
    assert q.bits_per_channel(8).tolist() == [2, 2, 8, 8, 4, 4, 3, 3]
    with pytest.raises(ConfigError, match="group_bits"):
        q.set_group_bits([2, 9, 4, 3])
    with pytest.raises(ConfigError, match="group_size 3"):
        make_quantizer(QuantSpec(4, "symmetric", "group", group_size=3), "w", 0, 8)


def test_disabled_and_32_bit_return_the_same_object():
    x = torch.randn(4)
    assert make_quantizer(QuantSpec(32), "x")(x) is x
    q = make_quantizer(QuantSpec(8), "x")
    q.enabled = False
    assert q(x) is x


def test_state_dict_round_trip():
    torch.manual_seed(0)
    x = torch.randn(64, 24)
    for spec, n in ((QuantSpec(6, "asymmetric", observer="omse"), None), (QuantSpec(4, "ptf"), 24),
                    (QuantSpec(3, "symmetric", "channel", observer="mse"), 64)):
        a = make_quantizer(spec, "a", 0, n)
        a.observe(x)
        a.compute_qparams()
        b = make_quantizer(spec, "b", 0, n)
        b.load_state_dict(a.state_dict())
        assert b.is_calibrated and torch.equal(a(x), b(x))


def test_streaming_minmax_exact_and_histogram_ranges_close():
    torch.manual_seed(0)
    batches = [torch.randn(4096) * (1 + i) + i for i in range(5)]
    obs = HistogramObserver("h")
    for b in batches:
        obs.update(b)
    full = torch.cat(batches)
    lo, hi = obs.range("minmax", 8, False)
    assert lo == full.min() and hi == full.max()
    p_lo, p_hi = obs.range("percentile", 8, False, percentile=99.0)
    assert abs(p_hi - torch.quantile(full, 0.99)) < 0.05 * (full.max() - full.min())  # within 5 % of range
    o_lo, o_hi = obs.range("omse", 4, False)
    ref_lo, ref_hi = search_range(full[None], torch.tensor([4.0]), False, "omse")
    assert abs(o_hi - ref_hi[0]) < 0.03 * (full.max() - full.min())  # histogram vs exact OMSE: 3 % of range


def _mse(x, lo, hi, bits):
    q = make_quantizer(QuantSpec(bits, "asymmetric"), "m")
    q.observe(torch.stack([lo, hi]))
    q.compute_qparams()
    return (q(x) - x).pow(2).mean()


def test_omse_never_worse_than_minmax():
    torch.manual_seed(1)
    x = torch.cat([torch.randn(10000), torch.tensor([25.0])])  # one outlier
    rows = x[None]
    mm = search_range(rows, torch.tensor([4.0]), False, "minmax")
    om = search_range(rows, torch.tensor([4.0]), False, "omse")
    assert _mse(x, om[0][0], om[1][0], 4) <= _mse(x, mm[0][0], mm[1][0], 4)
    assert om[1][0] < mm[1][0]  # the outlier is clipped


def test_log2_golden_values():
    x = torch.tensor([1.0, 0.5, 0.3, 0.25, 0.1, 2.0**-7, 2.0**-9, 0.0])
    # 3 bits: q in 0..7; 0.3 -> -log2 = 1.74 -> q 2 -> 0.25; 0.1 -> 3.32 -> 3 -> 0.125; 2^-9 -> q 9 > 7 -> 0
    expected = torch.tensor([1.0, 0.5, 0.25, 0.25, 0.125, 2.0**-7, 0.0, 0.0])
    assert torch.equal(log2_fake_quant(x, 3), expected)


def test_ptf_gives_wide_channels_large_alpha():
    torch.manual_seed(0)
    x = torch.randn(512, 8)
    x[:, 0] *= 8.0
    q = make_quantizer(QuantSpec(8, "ptf"), "ln", -1, 8)
    q.observe(x)
    q.compute_qparams()
    assert q.alpha[0] == 3 and (q.alpha[1:] < 3).all()
    assert (q(x) - x).pow(2).mean() < 1e-3  # 8-bit PTF error on unit-variance channels


def test_lsq_gradient_reaches_scale_and_input():
    x = torch.randn(32, 16, requires_grad=True)
    q = make_quantizer(QuantSpec(4, "symmetric", "channel", learnable=True), "w", 0, 32)
    q.observe(x.detach())
    q.compute_qparams()
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_nan_and_uncalibrated_errors_name_the_quantizer():
    q = make_quantizer(QuantSpec(8), "blocks.0.attn.qkv.input")
    with pytest.raises(DataError, match="blocks.0.attn.qkv.input"):
        q(torch.randn(3))  # not calibrated
    with pytest.raises(DataError, match="blocks.0.attn.qkv.input.*NaN"):
        q.observe(torch.tensor([1.0, float("nan")]))


def test_bias_correction_matches_channel_moments():
    torch.manual_seed(0)
    w = torch.randn(8, 50) * 0.1 + 0.02
    q = make_quantizer(QuantSpec(3, "symmetric", "channel"), "w", 0, 8)
    q.observe(w)
    q.compute_qparams()
    corrected = correct_bias(w, q(w))
    assert torch.allclose(corrected.mean(1), w.mean(1), atol=1e-6)
    assert torch.allclose(corrected.std(1, unbiased=False), w.std(1, unbiased=False), rtol=1e-4)


def test_dynamic_per_token():
    x = torch.randn(4, 10, 16)
    q = make_quantizer(QuantSpec(8, "asymmetric", "token"), "t")
    y = q(x)
    assert (y - x).abs().max() <= ((x.amax(-1) - x.amin(-1)) / 255).max() * 0.51 + 1e-6  # half a step
