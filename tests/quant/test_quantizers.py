"""Quantizer modules: the contract other modules code against (functional reference, state dicts, errors)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcompress.config import QuantSpec
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import (
    Log2Quantizer,
    PTFQuantizer,
    Quantizer,
    UniformQuantizer,
    fake_quant,
    log2_fake_quant,
    make_quantizer,
    ptf_fake_quant,
    qrange,
)
from vitcompress.quant.observers import qparams_from_range, search_range

BITS = st.sampled_from([2, 3, 4, 5, 6, 7, 8, 16])
SCHEME = st.sampled_from(["symmetric", "asymmetric"])
OBSERVER = st.sampled_from(["minmax", "percentile", "omse", "mse"])


pytestmark = pytest.mark.usefixtures("one_thread")


def calibrated(spec, x, channel_axis=0, num_channels=None, name="q"):
    q = make_quantizer(spec, name, channel_axis, num_channels)
    q.observe(x)
    q.compute_qparams()
    return q


def _shaped(t, x, axis=0, repeat=1):
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.repeat_interleave(repeat).reshape(shape)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**31 - 1), BITS, SCHEME, OBSERVER, st.sampled_from(["tensor", "channel", "group"]), st.booleans()
)
def test_forward_equals_functional_reference_and_is_idempotent(seed, bits, scheme, observer, granularity, learnable):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 12, generator=g) * torch.rand(8, 1, generator=g) * 10
    group_size = 2 if granularity == "group" else None
    spec = QuantSpec(bits, scheme, granularity, group_size, observer, learnable=learnable)
    q = calibrated(spec, x, 0, 8)
    y = q(x)
    qmin, qmax = qrange(bits, scheme == "symmetric")
    if granularity == "tensor":
        ref = fake_quant(x, q.scale, q.zero_point, qmin, qmax)
    else:
        rep = group_size or 1
        ref = fake_quant(x, _shaped(q.scale, x, 0, rep), _shaped(q.zero_point, x, 0, rep), qmin, qmax)
    assert torch.equal(y, ref)  # exactly the functional reference, LSQ or not
    assert torch.equal(q(y), y)  # idempotent on the grid
    scale = q.scale if granularity == "tensor" else _shaped(q.scale, x, 0, group_size or 1)
    zero = q.zero_point if granularity == "tensor" else _shaped(q.zero_point, x, 0, group_size or 1)
    # inside [(qmin − z)·s, (qmax − z)·s], with float32 slack of 1e-6 relative
    assert ((y >= (qmin - zero) * scale * (1 + 1e-6) - 1e-12) & (y <= (qmax - zero) * scale * (1 + 1e-6) + 1e-12)).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=64), st.integers(2, 8), SCHEME)
def test_any_data_idempotent_and_on_grid(values, bits, scheme):
    # arbitrary calibration data, degenerate included (one value, constants, all zeros): default min-max
    x = torch.tensor(values)
    q = calibrated(QuantSpec(bits, scheme), x)
    y = q(x)
    assert torch.equal(q(y), y)  # quantize∘dequantize is idempotent on the grid
    qmin, qmax = qrange(bits, scheme == "symmetric")
    codes = y / q.scale + q.zero_point
    assert torch.allclose(codes, codes.round(), atol=1e-3)  # on the grid (float32 rounding: 1e-3 codes)
    assert codes.min() >= qmin - 1e-3 and codes.max() <= qmax + 1e-3


def test_minmax_scales_golden():
    w = torch.tensor([[-1.0, 0.5], [0.2, 3.0]])
    q = calibrated(QuantSpec(4, "symmetric", "channel"), w, 0, 2)
    assert torch.allclose(q.scale, torch.tensor([1 / 7, 3 / 7]), rtol=1e-6, atol=0)  # max|w| / 7
    assert q.qparam_count() == 2  # symmetric: zero points are not counted
    q = calibrated(QuantSpec(8, "asymmetric"), w)
    assert q.scale.item() == pytest.approx(4 / 255, rel=1e-6) and q.zero_point.item() == 64
    assert q.qparam_count() == 2 and q.scale.shape == () and q.is_calibrated


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from([2, 3, 4, 8, 16]), min_size=4, max_size=4), SCHEME)
def test_group_scales_and_bits_are_honoured(group_bits, scheme):
    torch.manual_seed(0)
    w = torch.randn(8, 64)
    q = make_quantizer(QuantSpec(4, scheme, "group", group_size=2), "w", 0, 8)
    q.set_group_bits(group_bits)
    q.observe(w)
    q.compute_qparams()
    y = q(w)
    for group, bits in enumerate(group_bits):
        rows = y[2 * group : 2 * group + 2]
        assert rows.unique().numel() <= 2**bits  # one shared grid of 2^b values per group
        ref = calibrated(QuantSpec(bits, scheme, "channel"), w[2 * group : 2 * group + 2].reshape(1, -1), 0, 1)
        assert torch.equal(q.scale[group], ref.scale[0])  # the group's scale is that of its own bits and data
    assert q.bits_per_channel(8).tolist() == [float(b) for b in group_bits for _ in range(2)]
    assert q.qparam_count() == 4 * (1 if scheme == "symmetric" else 2)


def test_group_bits_validation_and_recompute():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    q = calibrated(QuantSpec(8, "symmetric", "group", group_size=4), w, 0, 8)
    before = q.scale.clone()
    q.set_group_bits(torch.tensor([2, 8]))  # statistics are kept: the scales follow the new bits at once
    assert q.scale[0] > before[0] * 10 and q.scale[1] == before[1]
    with pytest.raises(ConfigError, match="group_bits"):
        q.set_group_bits([2, 9])
    with pytest.raises(ConfigError, match="group_bits.*2 values"):
        q.set_group_bits([2, 4, 8])
    with pytest.raises(ConfigError, match="group_size 3"):
        make_quantizer(QuantSpec(4, "symmetric", "group", group_size=3), "w", 0, 8)
    with pytest.raises(ConfigError, match="granularity 'group'"):
        make_quantizer(QuantSpec(4, "symmetric", "channel"), "w", 0, 8).set_group_bits([4] * 8)
    q.reset_stats()
    q.set_group_bits([4, 4])  # no statistics left: the quantizer must be calibrated again
    assert not q.is_calibrated
    with pytest.raises(DataError, match="calibrate"):
        q(w)


@pytest.mark.parametrize(
    "spec,n",
    [
        (QuantSpec(8), None),
        (QuantSpec(4, "symmetric", "channel"), 6),
        (QuantSpec(4, "asymmetric", "token"), None),
        (QuantSpec(4, "log2"), None),
        (QuantSpec(8, "ptf"), 6),
        (QuantSpec(32), None),
    ],
)
def test_disabled_returns_same_object_and_calibrating_passes_through(spec, n):
    x = torch.rand(5, 6)
    q = make_quantizer(spec, "x", -1, n)
    q.calibrating = True
    assert q(x) is x  # observes, returns the input itself
    q.calibrating = False
    q.compute_qparams()
    q.enabled = False
    assert q(x) is x
    assert q.bits_per_channel(6).tolist() == [32.0] * 6 and q.qparam_count() == 0
    q.enabled = True
    if spec.bits == 32:
        assert q(x) is x and q.bits_per_channel(3).tolist() == [32.0] * 3
    else:
        assert q(x) is not x and q.bits_per_channel(3).tolist() == [float(spec.bits)] * 3


def test_make_quantizer_types():
    assert isinstance(make_quantizer(QuantSpec(8), "a"), UniformQuantizer)
    assert isinstance(make_quantizer(QuantSpec(8, "log2"), "p"), Log2Quantizer)
    assert isinstance(make_quantizer(QuantSpec(8, "ptf"), "n", -1, 4), PTFQuantizer)
    assert all(isinstance(make_quantizer(s, "x", 0, 4), Quantizer) for s in (QuantSpec(8), QuantSpec(8, "log2")))
    with pytest.raises(ConfigError, match="num_channels"):
        make_quantizer(QuantSpec(8, "ptf"), "n")
    with pytest.raises(ConfigError, match="num_channels"):
        make_quantizer(QuantSpec(8, "symmetric", "channel"), "w")


SPECS = [
    (QuantSpec(6, "asymmetric", observer="omse"), None, 0),
    (QuantSpec(4, "ptf"), 24, -1),
    (QuantSpec(3, "symmetric", "channel", observer="mse"), 64, 0),
    (QuantSpec(4, "asymmetric", "group", group_size=8, observer="percentile"), 64, 0),
    (QuantSpec(4, "symmetric", "channel", learnable=True), 24, -1),
    (QuantSpec(5, "log2"), None, 0),
    (QuantSpec(8, "symmetric", "token"), None, 0),
]


@pytest.mark.parametrize("spec,n,axis", SPECS)
def test_state_dict_round_trip(spec, n, axis):
    torch.manual_seed(0)
    x = torch.randn(64, 24).abs() if spec.scheme == "log2" else torch.randn(64, 24)
    a = make_quantizer(spec, "a", axis, n)
    for chunk in x.split(16):  # streaming for activations; per-channel weights see the whole tensor
        a.observe(chunk if n != 64 else x)
    if spec.granularity == "group":
        a.set_group_bits([2, 3, 4, 5, 6, 7, 8, 16])
    a.compute_qparams()
    b = make_quantizer(spec, "b", axis, n)  # fresh: uncalibrated, default buffers
    b.load_state_dict(a.state_dict())
    assert b.is_calibrated and torch.equal(a(x), b(x))


def test_lsq_gradient_reaches_scale_and_input():
    torch.manual_seed(0)
    x = torch.randn(32, 16, requires_grad=True)
    q = calibrated(QuantSpec(4, "symmetric", "channel", learnable=True), x.detach(), 0, 32)
    assert isinstance(q.scale, torch.nn.Parameter)
    q(x).pow(2).sum().backward()
    assert q.scale.grad is not None and q.scale.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    # the scale gradient is the plain fake-quant gradient times 1/sqrt(N·Qp), N = 16 values per scale, Qp = 7
    s = q.scale.detach().clone().requires_grad_(True)
    fake_quant(x.detach(), s[:, None], torch.zeros(32, 1), -8, 7).pow(2).sum().backward()
    assert torch.allclose(q.scale.grad, s.grad / math.sqrt(16 * 7), rtol=1e-5, atol=0)  # float32: 1e-5


def test_errors_name_the_quantizer():
    name = "blocks.0.attn.qkv.input"
    q = make_quantizer(QuantSpec(8), name)
    with pytest.raises(DataError, match=f"{name}.*calibrate"):
        q(torch.randn(3))  # not calibrated
    with pytest.raises(DataError, match=f"{name}.*no data"):
        q.compute_qparams()
    for spec, n in (
        (QuantSpec(8), None),
        (QuantSpec(8, "symmetric", "channel"), 3),
        (QuantSpec(8, "asymmetric", "token"), None),
        (QuantSpec(8, "log2"), None),
        (QuantSpec(8, "ptf"), 3),
    ):
        q = make_quantizer(spec, name, -1, n)
        with pytest.raises(DataError, match=f"{name}.*NaN"):
            q.observe(torch.tensor([[1.0, float("nan"), 0.5]]))
        q.calibrating = True
        with pytest.raises(DataError, match=f"{name}.*NaN or Inf"):
            q(torch.tensor([[1.0, float("inf"), 0.5]]))
    with pytest.raises(DataError, match=f"{name}.*3 channels"):
        make_quantizer(QuantSpec(8, "symmetric", "channel"), name, 0, 3).observe(torch.randn(4, 2))


@pytest.mark.parametrize(
    "spec, n, overflows",
    [
        (QuantSpec(8, "asymmetric"), None, True),  # hi - lo = 6.8e38 overflows float32
        (QuantSpec(8, "asymmetric", "channel"), 2, True),
        (QuantSpec(8, "symmetric"), None, False),  # max(|lo|, |hi|) / 127 stays finite
        (QuantSpec(4, "symmetric", "group", group_size=1), 2, False),
    ],
)
def test_a_scale_that_overflows_float32_is_an_error_naming_the_quantizer(spec, n, overflows):
    name = "blocks.0.mlp.fc1.input"
    q = make_quantizer(spec, name, 0, n)
    q.observe(torch.tensor([[-3.4e38, 3.4e38], [3.4e38, -3.4e38]]))
    if not overflows:
        q.compute_qparams()
        assert bool(torch.isfinite(q.scale).all() and (q.scale > 0).all())
        return
    with pytest.raises(DataError, match=rf"^quantizer {name}: calibration gave scale inf; the observed values"):
        q.compute_qparams()
    assert not q.is_calibrated


def test_dynamic_per_token():
    torch.manual_seed(0)
    x = torch.randn(4, 10, 16)
    q = make_quantizer(QuantSpec(8, "asymmetric", "token"), "t")
    assert q.is_calibrated and q.qparam_count() == 0
    y = q(x)
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / 255
    assert torch.equal(y, fake_quant(x, scale, torch.round(-lo / scale), 0, 255))
    assert ((y - x).abs() <= scale * 0.5 * (1 + 1e-5)).all()  # half a step per token (float32: 1e-5)


def test_log2_module_and_ptf_module_match_functional():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 3, 5, 5), -1)
    q = make_quantizer(QuantSpec(4, "log2"), "probs")
    assert q.is_calibrated and q.qparam_count() == 0 and torch.equal(q(p), log2_fake_quant(p, 4))
    x = torch.randn(4, 50, 8)
    x[..., 0] *= 8.0  # one channel with 8× the range of the others
    ptf = make_quantizer(QuantSpec(8, "ptf"), "ln", -1, 8)
    for chunk in x.split(1):
        ptf.observe(chunk)
    ptf.compute_qparams()
    assert ptf.alpha[0] == 3 and (ptf.alpha[1:] < 3).all()
    assert torch.equal(ptf(x), ptf_fake_quant(x, ptf.scale, ptf.zero_point, ptf.alpha, 0, 255))
    assert ptf.qparam_count() == 2
    assert (ptf(x) - x).pow(2).mean() < 1e-3  # 8-bit PTF on unit-variance channels: MSE below 1e-3
    with pytest.raises(DataError, match="ln.*8 channels"):
        ptf(torch.randn(3, 7))


def test_streaming_channel_activation_ranges():
    torch.manual_seed(0)
    x = torch.randn(6, 40, 16) * torch.linspace(0.1, 10, 16)
    q = make_quantizer(QuantSpec(8, "asymmetric", "channel", observer="omse"), "act", -1, 16)
    for chunk in x.split(1):
        q.observe(chunk)  # six batches: per-channel streaming histograms
    q.compute_qparams()
    ref_lo, ref_hi = search_range(x.reshape(-1, 16).T, 8, False, "omse")
    scale, zero, _, _ = qparams_from_range(ref_lo, ref_hi, 8, False)
    ref = fake_quant(x, scale, zero, 0, 255)
    # histogram OMSE vs exact OMSE on the same data: MSE within 5 % (bins of 1/512 of each channel's range)
    assert (q(x) - x).pow(2).mean() <= (ref - x).pow(2).mean() * 1.05


def test_16_bit_and_low_precision_inputs():
    torch.manual_seed(0)
    x = torch.randn(256)
    q = calibrated(QuantSpec(16, "asymmetric"), x)
    step = (x.max() - x.min()) / 65535
    assert (q(x) - x).abs().max() <= step * 0.5 * (1 + 1e-3)  # half a 16-bit step (float32 slack 1e-3)
    xb = x.to(torch.bfloat16)
    assert q(xb).dtype == torch.bfloat16  # the quantizer keeps its input's dtype
