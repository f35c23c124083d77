"""Functional reference of the quantizers (uniform, log2, PTF, LSQ gradients) and bias correction."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import (
    correct_bias,
    fake_quant,
    grad_scale,
    log2_fake_quant,
    ptf_fake_quant,
    qrange,
    qrange_tensor,
    round_ste,
)

BITS = st.sampled_from([2, 3, 4, 5, 6, 7, 8, 16])
values = st.lists(st.floats(-1000, 1000, allow_nan=False, width=32), min_size=1, max_size=64)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_qrange_golden_values():
    assert qrange(2, True) == (-2, 1)
    assert qrange(8, True) == (-128, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(16, False) == (0, 65535)
    assert qrange(4, False) == (0, 15)
    qmin, qmax = qrange_tensor(torch.tensor([2, 8]), True)
    assert qmin.tolist() == [-2, -128] and qmax.tolist() == [1, 127]
    for bad in (1, 33, 4.0, True):
        with pytest.raises(ConfigError, match="bits"):
            qrange(bad, True)


def _random_qparams(draw_scale: float, zero_frac: float, bits: int, symmetric: bool):
    qmin, qmax = qrange(bits, symmetric)
    zero = 0.0 if symmetric else float(round(qmin + zero_frac * (qmax - qmin)))
    return torch.tensor(draw_scale), torch.tensor(zero), qmin, qmax


@settings(max_examples=80, deadline=None)
@given(values, st.floats(1e-3, 50.0), st.floats(0, 1), BITS, st.booleans())
def test_fake_quant_idempotent_and_on_grid(xs, s, zero_frac, bits, symmetric):
    x = torch.tensor(xs)
    scale, zero, qmin, qmax = _random_qparams(s, zero_frac, bits, symmetric)
    y = fake_quant(x, scale, zero, qmin, qmax)
    assert torch.equal(fake_quant(y, scale, zero, qmin, qmax), y)  # exact: quantize∘dequantize on the grid
    codes = y / scale + zero
    # float32 division of a grid value by its scale, plus the zero point, is within a few float32 ulps of
    # the integer code; the ulps are those of |y/s| + |z| (up to 2^16 at 16 bits: ulp 2^-7), not of the code
    tol = 1e-3 + 4 * torch.finfo(torch.float32).eps * ((y / scale).abs() + abs(float(zero)))
    assert ((codes - codes.round()).abs() <= tol).all()
    assert (codes >= qmin - tol).all() and (codes <= qmax + tol).all()  # inside [qmin, qmax], same tolerance
    inside = (x / scale + zero >= qmin) & (x / scale + zero <= qmax)
    # inside the clamping range the error is at most half a step (plus float32 rounding: 1e-5 relative)
    assert ((y - x).abs()[inside] <= scale / 2 * (1 + 1e-5) + 1e-5 * x.abs()[inside]).all()


def test_fake_quant_golden_and_broadcast():
    x = torch.tensor([[-1.0, 0.26, 0.74, 9.0], [0.04, 0.16, -0.17, 2.0]])
    scale = torch.tensor([[0.5], [0.1]])  # per row
    zero = torch.tensor([[2.0], [0.0]])
    y = fake_quant(x, scale, zero, 0, 7)
    # row 0: codes clamp(round(x/0.5) + 2, 0, 7) = [0, 3, 3, 7] -> (q - 2)·0.5
    # row 1: codes [0, 2, -2 -> clamped 0, 20 -> clamped 7]
    expected = torch.tensor([[-1.0, 0.5, 0.5, 2.5], [0.0, 0.2, 0.0, 0.7]])
    assert torch.allclose(y, expected, atol=1e-7, rtol=0)  # float32 products such as 2·0.1: 1e-7
    # per-element bounds broadcast as well
    y2 = fake_quant(x, scale, zero, torch.tensor([[0.0], [-4.0]]), torch.tensor([[7.0], [3.0]]))
    assert torch.allclose(y2[1], torch.tensor([0.0, 0.2, -0.2, 0.3]), atol=1e-7, rtol=0)
    # ties round half to even (torch.round): 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert fake_quant(torch.tensor([0.5, 1.5, 2.5]), torch.tensor(1.0), torch.tensor(0.0), -8, 7).tolist() == [0, 2, 2]


def test_ste_gradients():
    x = torch.tensor([0.2, 1.4, 2.6, -3.0], requires_grad=True)
    round_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]
    x.grad = None
    scale = torch.tensor(1.0, requires_grad=True)
    fake_quant(x, scale, torch.tensor(0.0), -2, 1).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 0.0, 0.0]  # zero outside the clamping range
    # LSQ gradient on s: round(x/s) − x/s inside, the clipped code outside: (0 − 0.2) + 1 + 1 + (−2)
    assert scale.grad.item() == pytest.approx(-0.2, abs=1e-6)  # float32 rounding of x: 1e-6


def test_grad_scale_is_identity_forward_and_scales_gradient():
    t = torch.tensor([0.3, 1.7], requires_grad=True)
    y = grad_scale(t, 0.25)
    assert torch.equal(y, t)
    y.sum().backward()
    assert t.grad.tolist() == [0.25, 0.25]


def test_log2_golden_values():
    x = torch.tensor([1.0, 0.5, 0.3, 0.25, 0.1, 2.0**-7, 2.0**-7.6, 2.0**-9, 0.0, 1.5])
    # 3 bits: q = round(−log2 x) in 0..7. 0.3 -> 1.74 -> q 2 -> 0.25; 0.1 -> 3.32 -> q 3 -> 0.125;
    # 2^-7.6 -> q 8 > 7 -> 0; 2^-9 -> 0; 0 -> 0; 1.5 -> q clamps to 0 -> 1
    expected = torch.tensor([1.0, 0.5, 0.25, 0.25, 0.125, 2.0**-7, 0.0, 0.0, 0.0, 1.0])
    assert torch.equal(log2_fake_quant(x, 3), expected)
    # 2 bits: levels q = 0..3; 0.1 -> q 3 -> 0.125; 2^-7 -> 0
    assert torch.equal(log2_fake_quant(torch.tensor([0.1, 2.0**-7, 0.7]), 2), torch.tensor([0.125, 0.0, 0.5]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False, width=32), min_size=1, max_size=64), BITS)
def test_log2_levels_and_idempotence(ps, bits):
    x = torch.tensor(ps)
    y = log2_fake_quant(x, bits)
    assert torch.equal(log2_fake_quant(y, bits), y)
    nonzero = y[y > 0]
    q = -torch.log2(nonzero)
    assert torch.equal(q, q.round()) and ((q >= 0) & (q <= 2**bits - 1)).all()  # x̂ = 2^−q, q on the grid
    kept = (x > 0) & (y > 0)
    # round(−log2 x) is within half a level: the ratio x̂/x lies in [2^−½, 2^½] (1e-6 float slack)
    ratio = y[kept] / x[kept]
    assert ((ratio >= 2**-0.5 - 1e-6) & (ratio <= 2**0.5 + 1e-6)).all()


def test_log2_gradient_is_straight_through():
    x = torch.tensor([0.3, 0.01], requires_grad=True)
    log2_fake_quant(x, 4).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


def test_ptf_uses_power_of_two_channel_scales():
    x = torch.tensor([[0.33, 0.33, 0.33, 0.33], [-0.9, 1.9, 5.0, 100.0]])
    alpha = torch.tensor([0, 1, 2, 3])
    y = ptf_fake_quant(x, torch.tensor(0.1), torch.tensor(10.0), alpha, 0, 255)
    scales = torch.tensor([0.1, 0.2, 0.4, 0.8])  # s·2^α
    assert torch.equal(y, fake_quant(x, scales, torch.tensor(10.0), 0, 255))
    # channel 3 (scale 0.8): 0.33 -> 0.0; 100 -> code 125 + 10 = 135 -> 100.0; channel 0: -0.9 -> -0.9
    assert torch.allclose(y[:, 3], torch.tensor([0.0, 100.0]), atol=1e-5, rtol=0)  # float32: 1e-5
    assert torch.allclose(y[1, 0], torch.tensor(-0.9), atol=1e-6, rtol=0)


def test_bias_correction_matches_channel_moments():
    torch.manual_seed(0)
    w = torch.randn(8, 50) * 0.1 + 0.02
    w_hat = (w / 0.05).round() * 0.05 * 0.9 + 0.01  # a biased, shrunk de-quantized weight
    corrected = correct_bias(w, w_hat)
    assert torch.allclose(corrected.mean(1), w.mean(1), atol=1e-6, rtol=0)  # float32 means: 1e-6
    assert torch.allclose(corrected.std(1, unbiased=False), w.std(1, unbiased=False), rtol=1e-4, atol=0)
    # other axis: per column
    corrected = correct_bias(w, w_hat, axis=1)
    assert torch.allclose(corrected.mean(0), w.mean(0), atol=1e-6, rtol=0)


def test_bias_correction_golden_and_errors():
    w = torch.tensor([[1.0, 3.0]])  # μ 2, σ 1
    w_hat = torch.tensor([[0.0, 4.0]])  # μ 2, σ 2 -> variance step gives [1, 3]; mean already equal
    assert torch.allclose(correct_bias(w, w_hat), torch.tensor([[1.0, 3.0]]), atol=1e-6, rtol=0)
    # a channel quantized to a constant keeps its values (σ(Ŵ) = 0, eps avoids 0/0), mean moves to μ(W)
    assert torch.allclose(correct_bias(w, torch.tensor([[5.0, 5.0]])), torch.tensor([[2.0, 2.0]]))
    with pytest.raises(DataError, match="same shape"):
        correct_bias(w, torch.zeros(2, 2))


@pytest.mark.parametrize(
    "shape, sshape, bounds",
    [((4, 50, 24), (1, 1, 24), (-128, 127)), ((6, 40), (), (0, 15)), ((5, 7), (5, 1), "tensor")],
)
def test_fake_quant_without_gradient_equals_the_gradient_path_bit_for_bit(shape, sshape, bounds):
    # the in-place no-grad path (calibration, evaluation, searches) must give exactly the training path's values
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g) * 4
    scale = torch.rand(sshape, generator=g) + 0.01
    zero = torch.round(torch.randn(sshape, generator=g) * 3)
    lo, hi = (torch.full(sshape, -8.0), torch.full(sshape, 7.0)) if bounds == "tensor" else bounds
    trained = fake_quant(x.clone().requires_grad_(), scale, zero, lo, hi).detach()
    with torch.no_grad():
        fast = fake_quant(x, scale, zero, lo, hi)
    assert torch.equal(trained, fast)  # tolerance 0
    assert not torch.equal(fast, x)  # the values were actually quantized
