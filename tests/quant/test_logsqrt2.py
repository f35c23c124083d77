"""Log√2 quantizer (RepQ-ViT): functional reference, grid, calibration, module contract."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.errors import ConfigError, DataError
from vitcompress.quant import log2_fake_quant, make_quantizer
from vitcompress.quant.logsqrt2 import LogSqrt2Quantizer, log_sqrt2_fake_quant

pytestmark = pytest.mark.usefixtures("one_thread")


def test_golden_values():
    x = torch.tensor([1.0, 0.75, 0.5, 0.3, 0.01, 0.0, 1e-6, 2.0])
    # codes round(−2·log2 x): 0, 1 (0.83), 2, 3 (3.47), 13 (13.29), zero, 40 > 15 → zero, −2 → clamped to 0
    want = torch.tensor([1.0, 2**-0.5, 0.5, 2**-1.5, 2**-6.5, 0.0, 0.0, 1.0])
    assert torch.allclose(log_sqrt2_fake_quant(x, 1.0, 4), want, rtol=1e-6, atol=0)
    # a scale moves the whole grid: s·2^(−q/2)
    assert torch.allclose(log_sqrt2_fake_quant(x * 0.25, 0.25, 4), want * 0.25, rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2, 3, 4, 6, 8]), st.floats(0.05, 1.0))
def test_on_grid_idempotent_and_within_a_quarter_octave(seed, bits, scale):
    x = torch.rand(200, generator=torch.Generator().manual_seed(seed)) ** 4  # many small values, as softmax
    y = log_sqrt2_fake_quant(x, scale, bits)
    levels = scale * torch.exp2(-0.5 * torch.arange(2**bits, dtype=torch.float32))  # as the quantizer computes them
    on_grid = (y[:, None] == levels[None]).any(1) | (y == 0)
    assert bool(on_grid.all())
    assert torch.equal(log_sqrt2_fake_quant(y, scale, bits), y)  # idempotent
    inside = (x <= scale) & (x >= levels[-1])  # not clipped above, not flushed to zero
    ratio = y[inside] / x[inside]
    assert bool((ratio >= 2**-0.25 - 1e-6).all() and (ratio <= 2**0.25 + 1e-6).all())


def test_gradient_is_straight_through():
    x = torch.rand(10, requires_grad=True)
    log_sqrt2_fake_quant(x, 1.0, 4).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))


def test_finer_than_log2_on_softmax_probabilities():
    g = torch.Generator().manual_seed(0)
    p = (torch.randn(64, 50, 50, generator=g) * 3).softmax(-1)
    err2 = (log2_fake_quant(p, 4) - p).pow(2).mean()
    errs2 = (log_sqrt2_fake_quant(p, 1.0, 4) - p).pow(2).mean()
    assert errs2 < 0.5 * err2  # measured about 0.3×


def test_module_calibrates_scale_and_matches_functional():
    q = make_quantizer(QuantSpec(4, "log_sqrt2"), "blocks.0.attn.probs")
    assert isinstance(q, LogSqrt2Quantizer)
    x = torch.tensor([0.3, 0.15, 0.0, 0.075] * 50)  # every value on the grid of s = 0.3, none on that of 1
    q.observe(x)
    q.compute_qparams()
    assert float(q.scale) == pytest.approx(0.3, abs=1e-6)  # the observed max: least squared error (0)
    assert torch.equal(q(x), log_sqrt2_fake_quant(x, q.scale, 4))
    assert q.qparam_count() == 1
    fresh = make_quantizer(QuantSpec(4, "log_sqrt2"), "blocks.0.attn.probs")
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(x), q(x))


def test_errors_and_config():
    q = make_quantizer(QuantSpec(4, "log_sqrt2"), "blocks.0.attn.probs")
    with pytest.raises(DataError, match="blocks.0.attn.probs.*no scale yet"):
        q(torch.rand(3))
    with pytest.raises(DataError, match="blocks.0.attn.probs.*NaN"):
        q.observe(torch.tensor([math.nan]))
    with pytest.raises(ConfigError, match="granularity must be 'tensor' for scheme 'log_sqrt2'"):
        QuantSpec(4, "log_sqrt2", "channel")
    r = Recipe(probs=QuantSpec(4, "log_sqrt2"))
    assert Recipe.from_dict(r.to_dict()) == r


def test_presets_use_them():
    r = get_preset("repq-w4a4")
    assert r.reparam and (r.probs.scheme, r.probs.bits) == ("log_sqrt2", 4) and r.norm.scheme == "ptf"
    assert get_preset("repq-w4a8").probs.scheme == "asymmetric"  # 8-bit uniform resolves more than log√2
    plain = get_preset("w4a4")  # 16 uniform levels cannot hold softmax outputs or the residual stream
    assert (plain.act.bits, plain.probs.bits, plain.norm.bits, plain.probs.scheme) == (4, 8, 8, "asymmetric")
