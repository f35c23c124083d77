"""Leading tokens apart (``QuantSpec.prefix_tokens``): class/distillation/register tokens that differ in
scale from the patch tokens get scales of their own, so one shared scale does not erase them."""

import pytest
import torch

from vitcompress.config import QuantSpec, Recipe
from vitcompress.errors import ConfigError
from vitcompress.quant import fake_quant, make_quantizer
from vitcompress.quant.functional import token_qparams
from vitcompress.quant.observers import (
    HistogramObserver,
    RowHistogram,
    TokenObserver,
    group_search,
    qparams_from_range,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tokens(scales: dict[int, float], b: int = 8, n: int = 20, c: int = 16, seed: int = 0) -> torch.Tensor:
    """(b, n, c) activations ~N(0, 1), token t multiplied by ``scales[t]``."""
    x = torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))
    for t, s in scales.items():
        x[:, t] *= s
    return x


def calibrated(spec: QuantSpec, *batches: torch.Tensor, c: int = 16):
    q = make_quantizer(spec, "blocks.0.norm1.input", -1, c)
    for x in batches:
        q.observe(x)
    q.compute_qparams()
    return q


@pytest.mark.parametrize(
    ("scales", "p"),
    [
        ({}, 0),  # all tokens alike: one scale
        ({0: 0.02, 1: 0.02}, 2),  # class + distillation tokens 50x smaller
        ({0: 50.0}, 1),  # a massive token: the others keep a fine scale
        ({2: 0.01}, 3),  # a small register behind an ordinary class token: positions 0..2 apart
        ({0: 0.8, 1: 1.25}, 0),  # well within 2x of the others: shared
        ({12: 0.01}, 0),  # past the first N // 2 positions: never apart
    ],
)
def test_split_finds_the_tokens_apart(scales, p):
    obs = TokenObserver(16, HistogramObserver("q"), "q")
    obs.update(tokens(scales))
    assert obs.k == 10  # min(16, N // 2)
    assert obs.split() == p


def test_inputs_without_a_token_axis_share_one_scale():
    spec = QuantSpec(8, "asymmetric", prefix_tokens=4)
    x2, x4 = torch.randn(8, 16), torch.randn(2, 4, 4, 16)
    for x in (x2, x4):
        q = calibrated(spec, x)
        assert q.prefix_count == 0
        assert torch.equal(q(x), calibrated(QuantSpec(8, "asymmetric"), x)(x))


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric", "ptf"])
def test_a_small_class_token_survives(scheme):
    x = tokens({0: 0.01, 1: 0.01})
    shared = calibrated(QuantSpec(8, scheme), x)
    apart = calibrated(QuantSpec(8, scheme, prefix_tokens=16), x)
    assert apart.prefix_count == 2
    err = lambda q: ((q(x)[:, :2] - x[:, :2]).norm() / x[:, :2].norm()).item()  # noqa: E731
    assert err(shared) > 0.5  # one shared step is ~40x the class token's spread: it is (nearly) erased
    assert err(apart) < 0.01  # 8 bits on its own range: < 1 % relative error
    patches = lambda q: ((q(x)[:, 2:] - x[:, 2:]).norm() / x[:, 2:].norm()).item()  # noqa: E731
    assert patches(apart) <= patches(shared) * 1.01  # the patch tokens lose nothing (1 % tolerance)


@pytest.mark.parametrize(
    "spec", [QuantSpec(8, "asymmetric", prefix_tokens=8), QuantSpec(6, "symmetric", prefix_tokens=8)]
)
@pytest.mark.parametrize("observer", ["minmax", "percentile", "omse", "mse"])
def test_uniform_forward_equals_functional_reference(spec, observer):
    from dataclasses import replace

    spec = replace(spec, observer=observer)
    x = tokens({0: 0.05, 1: 30.0})
    q = calibrated(spec, x, tokens({0: 0.05, 1: 30.0}, seed=1))  # two batches: streaming histograms
    p = q.prefix_count
    assert p == 2
    s, z = token_qparams(q.scale, q.zero_point, q.token_scale[:p], q.token_zero[:p], x.shape[1])
    assert s.shape == (20, 1)
    qmin, qmax = (
        (0, 2**spec.bits - 1) if spec.scheme == "asymmetric" else (-(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1)
    )
    assert torch.equal(q(x), fake_quant(x, s, z, qmin, qmax))
    assert q.qparam_count() == (1 + p) * (2 if spec.scheme == "asymmetric" else 1)


def test_ptf_forward_equals_functional_reference():
    x = tokens({0: 0.02}) * torch.linspace(0.2, 4.0, 16)  # channels of different ranges: factors differ
    q = calibrated(QuantSpec(8, "ptf", prefix_tokens=16), x)
    assert q.prefix_count == 1 and len(set(q.alpha.tolist())) > 1
    channel_scale = q.scale * torch.exp2(q.alpha.float())
    s, z = token_qparams(channel_scale, q.zero_point, q.token_scale[:1], q.token_zero[:1], x.shape[1])
    assert s.shape == (20, 16)
    assert torch.equal(q(x), fake_quant(x, s, z, 0, 255))
    lo, hi = x[:, 0].min(), x[:, 0].max()  # the class token: plain min-max on its own range
    assert torch.allclose(q.token_scale[0], qparams_from_range(lo, hi, 8, False)[0], rtol=1e-6)


@pytest.mark.parametrize("scheme", ["asymmetric", "ptf"])
def test_state_dict_round_trip(scheme):
    spec = QuantSpec(8, scheme, prefix_tokens=16)
    x = tokens({0: 0.02, 1: 0.02, 2: 0.02})
    q = calibrated(spec, x)
    fresh = make_quantizer(spec, "blocks.0.norm1.input", -1, 16)
    fresh.load_state_dict(q.state_dict())
    assert fresh.prefix_count == 3
    assert torch.equal(fresh(x), q(x))


def test_no_prefix_tokens_no_new_state():
    """Quantizers without prefix_tokens keep the state dict keys of before (saved models load)."""
    q = make_quantizer(QuantSpec(8, "asymmetric"), "q", -1, 16)
    assert set(q.state_dict()) == {"calibrated", "scale", "zero_point"}
    assert q.prefix_count == 0


def test_fewer_tokens_later_and_a_single_token():
    spec = QuantSpec(8, "asymmetric", prefix_tokens=16)
    q = calibrated(spec, tokens({0: 0.02}))
    y = tokens({0: 0.02}, n=1)  # one token (CaiT's class-attention norm2): token 0 on its own scale
    assert torch.equal(q(y), fake_quant(y, q.token_scale[0], q.token_zero[0], 0, 255))
    single = calibrated(spec, tokens({}, n=1))  # N // 2 = 0: nothing can be set apart
    assert single.prefix_count == 0


def _rows(values: torch.Tensor, bins: int) -> RowHistogram:
    h = RowHistogram(values.shape[0], "h", bins)
    h.update_rows(values)
    return h


@pytest.mark.parametrize("observer", ["minmax", "percentile", "omse"])
def test_group_search_is_the_search_over_the_union(observer):
    g = torch.Generator().manual_seed(3)
    lead = torch.randn(4, 500, generator=g, dtype=torch.float64) * torch.tensor([[0.1], [1.0], [2.0], [0.5]])
    tail = torch.randn(1, 4000, generator=g, dtype=torch.float64) * 1.5
    parts = [(_rows(lead, 512), slice(1, None)), (_rows(tail, 2048), slice(None))]
    lo, hi = group_search(parts, observer, 8, False, percentile=99.0)
    union = torch.cat([lead[1:].flatten(), tail.flatten()])
    ref = _rows(union[None], 2048).search(observer, 8, False, 99.0)
    if observer == "minmax":
        assert (lo, hi) == (union.min(), union.max())
    else:  # the same search on differently binned histograms: within 2 % of the range
        span = float(union.max() - union.min())
        assert abs(float(lo - ref[0][0])) < 0.02 * span and abs(float(hi - ref[1][0])) < 0.02 * span


def test_spec_field_checks_and_serialisation():
    spec = QuantSpec(8, "asymmetric", prefix_tokens=16)
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    assert "prefix_tokens" not in QuantSpec(8, "asymmetric").to_dict()  # old recipes stay byte-identical
    for bad in (-1, 65, 2.5, True):
        with pytest.raises(ConfigError, match="prefix_tokens must be an integer"):
            QuantSpec(8, "asymmetric", prefix_tokens=bad)
    with pytest.raises(ConfigError, match="prefix_tokens needs granularity 'tensor'"):
        QuantSpec(8, "asymmetric", "channel", prefix_tokens=4)
    with pytest.raises(ConfigError, match="prefix_tokens needs"):
        QuantSpec(8, "log2", prefix_tokens=4)
    recipe = Recipe(norm=spec, overrides=(("blocks.0.norm1.input", {"granularity": "token"}),))
    assert recipe.spec_for("blocks.0.norm1.input", "norm").prefix_tokens == 0  # dropped where it cannot apply
    assert recipe.spec_for("blocks.1.norm1.input", "norm").prefix_tokens == 16
