"""MixA-Q ratio samplers and equivalent bits (MixA-Q supplementary material: Algorithm 1, eq. 3–5)."""

import argparse
import json
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq import (
    SWIN_T_C,
    SWIN_T_GMACS,
    equivalent_bits,
    naive_sample,
    ratio_groups,
    relative_cost,
    sum_range_from_cost,
    uniform_sum_sample,
)
from vitcompress.methods.mixaq.cli import add_eqbits_arguments, add_sample_arguments, run_eqbits, run_sample

pytestmark = pytest.mark.timeout(60)
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=150)


def as_ints(vector, scale=10):
    """The integer-scale ratios k_i = r_i·scale, checking every r_i is exactly the float round(k/scale, 1)."""
    ks = [round(r * scale) for r in vector]
    assert list(vector) == [round(k / scale, 1) for k in ks], vector
    return ks


# ------------------------------------------------------------------------------- uniform-sum sampler
@st.composite
def sampler_cases(draw):
    n = draw(st.integers(1, 8))
    upper_k = draw(st.integers(1, 10))
    # Keep the range to <= 60 % of the top sum: near n·U the rejection loop's acceptance gets tiny.
    top = max(0, int(0.6 * n * upper_k))
    lo = draw(st.integers(0, top))
    hi = draw(st.integers(lo, top))
    return n, upper_k, lo, hi, draw(st.integers(0, 2**32 - 1))


@SETTINGS
@given(sampler_cases())
def test_uniform_sum_samples_are_on_the_grid_and_sum_exactly_inside_the_range(case):
    n, upper_k, lo, hi, seed = case
    vectors = uniform_sum_sample(n, (lo / 10, hi / 10), upper=upper_k / 10, count=5, seed=seed)
    assert len(vectors) == 5
    for v in vectors:
        assert len(v) == n
        ks = as_ints(v)
        assert all(0 <= k <= upper_k for k in ks)
        assert lo <= sum(ks) <= hi  # an integer S on the ×10 scale, reached exactly by the LRM rounding


@SETTINGS
@given(st.integers(1, 8), st.integers(1, 10), st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_naive_samples_are_on_the_grid(n, upper_k, seed, count):
    vectors = naive_sample(n, upper=upper_k / 10, count=count, seed=seed)
    assert len(vectors) == count and all(len(v) == n for v in vectors)
    assert all(0 <= k <= upper_k for v in vectors for k in as_ints(v))


def test_range_off_the_grid_uses_the_multiples_of_step_inside_it():
    vectors = uniform_sum_sample(6, (0.55, 0.95), count=300, seed=3)
    assert {sum(as_ints(v)) for v in vectors} == {6, 7, 8, 9}


def test_float_noise_in_the_range_does_not_drop_the_endpoints():
    lo, hi = (1 - 0.95) * 6 * 2, (1 - 0.65) * 6 * 2  # 0.6000000000000005, 4.199999999999999
    sums = {sum(as_ints(v)) for v in uniform_sum_sample(6, (lo, hi), count=3000, seed=0)}
    assert min(sums) == 6 and max(sums) == 42


def test_finer_step_grid():
    vectors = uniform_sum_sample(4, (0.1, 0.5), upper=0.5, step=0.05, count=50, seed=1)
    for v in vectors:
        ks = [round(r * 20) for r in v]
        assert list(v) == [round(k / 20, 2) for k in ks] and 2 <= sum(ks) <= 10 and max(ks) <= 10


def test_seed_reproducibility():
    a = uniform_sum_sample(6, (0.6, 4.2), count=20, seed=123)
    assert a == uniform_sum_sample(6, (0.6, 4.2), count=20, seed=123)
    assert a != uniform_sum_sample(6, (0.6, 4.2), count=20, seed=124)
    assert naive_sample(6, count=20, seed=5) == naive_sample(6, count=20, seed=5)
    # A Generator is used in place: two calls continue the stream, and equal a fresh one drawing both.
    rng = np.random.default_rng(7)
    first, second = uniform_sum_sample(6, (0.6, 4.2), seed=rng), uniform_sum_sample(6, (0.6, 4.2), seed=rng)
    rng2 = np.random.default_rng(7)
    assert [first[0], second[0]] == [uniform_sum_sample(6, (0.6, 4.2), seed=rng2)[0] for _ in range(2)]


def test_edge_sums_and_sizes():
    assert uniform_sum_sample(6, (4.8, 4.8), count=3, seed=0) == [(0.8,) * 6] * 3  # S = n·U: only one vector
    assert uniform_sum_sample(6, (0.0, 0.0), seed=0) == [(0.0,) * 6]
    assert uniform_sum_sample(1, (0.3, 0.3), seed=0) == [(0.3,)]
    assert uniform_sum_sample(6, (0.6, 4.2), count=0) == []
    # A large but reachable sum (acceptance ≈ 0.5 % at 4.2 of 4.8) still returns.
    assert all(sum(as_ints(v)) == 42 for v in uniform_sum_sample(6, (4.2, 4.2), count=5, seed=0))


def test_sum_distribution_is_uniform_while_naive_sums_concentrate():
    """MixA-Q supplementary §6.1 / Table 6: uniform-sum sampling covers the sum range evenly, naive
    sampling does not.

    Tolerances (fixed seeds, N = 3,700): chi-square over the 37 integer sums 6..42 below 67.99, the
    0.999 quantile of chi²(36); each third of the range holds 12/37 ≈ 0.324 of the samples ± 0.04
    (> 5 standard deviations). Naive sums (6 i.i.d. uniform on 0..8, mean 24, sd 6.3) put > 55 % in
    the middle third 18..29 and < 20 % in the low third 6..17.
    """
    n_samples = 3700
    sums = np.array([sum(as_ints(v)) for v in uniform_sum_sample(6, (0.6, 4.2), count=n_samples, seed=2024)])
    counts = np.bincount(sums - 6, minlength=37)
    assert counts.size == 37
    expected = n_samples / 37
    assert ((counts - expected) ** 2 / expected).sum() < 67.99
    thirds = [np.mean((sums >= a) & (sums <= a + 11)) for a in (6, 18, 30)]
    assert all(abs(t - 12 / 37) < 0.04 for t in thirds), thirds

    naive = np.array([sum(as_ints(v)) for v in naive_sample(6, count=n_samples, seed=2024)])
    assert np.mean((naive >= 18) & (naive <= 29)) > 0.55
    assert np.mean((naive >= 6) & (naive <= 17)) < 0.20


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_blocks": 0}, "n_blocks"),
        ({"sum_range": (0.5, 0.4)}, "sum_range"),
        ({"sum_range": (-0.1, 0.4)}, "sum_range"),
        ({"sum_range": (0.6, 4.9)}, "sum_range"),
        ({"sum_range": (0.61, 0.69)}, "sum_range"),
        ({"sum_range": (0.6,)}, "sum_range"),
        ({"upper": 0.0}, "upper"),
        ({"upper": 1.5}, "upper"),
        ({"upper": 0.85}, "upper"),
        ({"step": 0.3}, "step"),
        ({"step": 0.0}, "step"),
        ({"alpha": 0.0}, "alpha"),
        ({"count": -1}, "count"),
        ({"sum_range": (4.7, 4.7), "max_tries": 200}, "max_tries"),
    ],
)
def test_uniform_sum_validation_names_the_field(kwargs, field):
    args = {"n_blocks": 6, "sum_range": (0.6, 4.2), "seed": 0} | kwargs
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        uniform_sum_sample(**args)


def test_naive_validation_names_the_field():
    with pytest.raises(ConfigError, match="^n_blocks:"):
        naive_sample(0)
    with pytest.raises(ConfigError, match="^upper:"):
        naive_sample(6, upper=0.75)


# ------------------------------------------------------------------------------ sum range and groups
def test_sum_range_from_cost_matches_the_papers_swin_t():
    assert sum_range_from_cost((0.65, 0.95), 6) == (0.6, 4.2)  # MixA-Q supplementary §6.1
    assert sum_range_from_cost((0.65, 0.95), 6, saving_per_window=1.0) == (0.3, 2.1)  # pruning saves 100 %
    assert sum_range_from_cost((1.0, 1.0), 12) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (((0.95, 0.65), 6), "rel_cost_range"),
        (((0.5, 1.2), 6), "rel_cost_range"),
        (((0.65, 0.95), 0), "n_blocks"),
        (((0.65, 0.95), 6, 0.0), "saving_per_window"),
    ],
)
def test_sum_range_from_cost_validation(args, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        sum_range_from_cost(*args)


def test_ratio_groups_swin_t_and_swin_s():
    groups = ratio_groups((2, 2, 6, 2))
    assert [g.name for g in groups] == [
        "layers.0.blocks.0-1",
        "layers.1.blocks.0-1",
        "layers.2.blocks.0-1",
        "layers.2.blocks.2-3",
        "layers.2.blocks.4-5",
        "layers.3.blocks.0-1",
    ]
    assert groups[3].blocks == ("layers.2.blocks.2", "layers.2.blocks.3") and groups[3].stage == 2
    assert len(ratio_groups((2, 2, 18, 2))) == 12


def test_ratio_groups_odd_depth_last_block_alone():
    groups = ratio_groups((2, 2, 5, 2))
    assert [g.name for g in groups][2:5] == ["layers.2.blocks.0-1", "layers.2.blocks.2-3", "layers.2.blocks.4"]
    assert groups[4].blocks == ("layers.2.blocks.4",)
    assert [g.name for g in ratio_groups((1,), prefix="stages")] == ["stages.0.blocks.0"]
    covered = [b for g in ratio_groups((3, 1, 7)) for b in g.blocks]
    assert len(covered) == len(set(covered)) == 11  # every block exactly once


def test_ratio_groups_validation():
    with pytest.raises(ConfigError, match="^depths:"):
        ratio_groups(())
    with pytest.raises(ConfigError, match=r"^depths\[1\]:"):
        ratio_groups((2, 0, 2))


# ---------------------------------------------------------------------------------- equivalent bits
G_SUM = Fraction("83.36")  # Σ of MixA-Q supplementary eq. 1 (13.3 + 13.56 + 3·14.16 + 14.02)


def test_swin_t_golden_values():
    assert sum(SWIN_T_GMACS) == pytest.approx(float(G_SUM), abs=1e-12) and SWIN_T_C == 3
    # Every pair half compressed, 4-bit base: 4·(0.75·83.36 + 3)/86.36 (eq. 3, 5).
    want = 4 * (Fraction(3, 4) * G_SUM + 3) / (G_SUM + 3)
    assert equivalent_bits(SWIN_T_GMACS, SWIN_T_C, [0.5] * 6, 4) == pytest.approx(float(want), rel=1e-12)
    assert float(want) == pytest.approx(3.0347383, abs=1e-7)
    # The paper's top of the sampling range, every ratio 0.8: 4·(0.6·83.36 + 3)/86.36 ≈ 2.4556.
    want = 4 * (Fraction(3, 5) * G_SUM + 3) / (G_SUM + 3)
    assert equivalent_bits(SWIN_T_GMACS, SWIN_T_C, [0.8] * 6, 4) == pytest.approx(float(want), rel=1e-12)
    # One non-uniform vector, by hand: Σ r_i·G_i = 0.2·13.3 + 0.8·14.16 + 0.4·14.02 = 19.596.
    ratios = [0.2, 0.0, 0.8, 0.0, 0.0, 0.4]
    kept = G_SUM - Fraction("19.596") / 2
    assert equivalent_bits(SWIN_T_GMACS, SWIN_T_C, ratios, 8) == pytest.approx(float(8 * (kept + 3) / (G_SUM + 3)))
    kept = G_SUM - Fraction("19.596")  # SparseViT, eq. 4
    assert equivalent_bits(SWIN_T_GMACS, SWIN_T_C, ratios, 8, method="sparsevit") == pytest.approx(
        float(8 * (kept + 3) / (G_SUM + 3))
    )


gmacs_lists = st.lists(st.floats(0.01, 100), min_size=1, max_size=8)


@SETTINGS
@given(gmacs_lists, st.floats(0, 10), st.sampled_from([2, 3, 4, 6, 8]), st.sampled_from(["mixaq", "sparsevit"]))
def test_zero_ratios_give_base_bits_exactly(gmacs, c, base, method):
    assert equivalent_bits(gmacs, c, [0.0] * len(gmacs), base, method=method) == base


@SETTINGS
@given(gmacs_lists, st.floats(0, 10), st.sampled_from([2, 4, 8]))
def test_full_ratios_mixaq_halves_and_sparsevit_keeps_only_c(gmacs, c, base):
    ones = [1.0] * len(gmacs)
    g = sum(gmacs)
    assert equivalent_bits(gmacs, 0, ones, base) == pytest.approx(base / 2, rel=1e-12)
    assert equivalent_bits(gmacs, c, ones, base, method="sparsevit") == pytest.approx(base * c / (g + c), abs=1e-12)
    assert equivalent_bits(gmacs, c, ones, base) == pytest.approx(base * (g / 2 + c) / (g + c), rel=1e-12)


@SETTINGS
@given(
    gmacs_lists.flatmap(lambda g: st.tuples(st.just(g), st.lists(st.floats(0, 1), min_size=len(g), max_size=len(g))))
)
def test_pruning_costs_at_most_compression(case):
    gmacs, ratios = case
    mixaq = relative_cost(gmacs, 1.0, ratios)
    sparse = relative_cost(gmacs, 1.0, ratios, method="sparsevit")
    assert sparse <= mixaq + 1e-12 and sparse > 0 and mixaq <= 1 + 1e-12


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (([1.0, 2.0], 1.0, [0.1], 4), {}, "^ratios: length 1 differs"),
        (([1.0, 2.0], 1.0, [0.1, 1.2], 4), {}, r"^ratios\[1\]: must be in \[0, 1\]"),
        (([1.0, 2.0], 1.0, [0.1, -0.1], 4), {}, r"^ratios\[1\]:"),
        (([1.0, 2.0], 1.0, [0.1, 0.2], 4), {"method": "prune"}, r"^method: must be one of \['mixaq', 'sparsevit'\]"),
        (([1.0, -2.0], 1.0, [0.1, 0.2], 4), {}, "^gmacs:"),
        (([], 1.0, [], 4), {}, "^gmacs:"),
        (([0.0], 0.0, [0.5], 4), {}, "^gmacs:"),
        (([1.0], -1.0, [0.5], 4), {}, "^c:"),
        (([1.0], 1.0, [0.5], 0), {}, "^base_bits:"),
        (([1.0], 1.0, [float("nan")], 4), {}, r"^ratios\[0\]: must be a finite number"),
    ],
)
def test_equivalent_bits_validation_names_the_field(args, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        equivalent_bits(*args, **kwargs)


# ---------------------------------------------------------------------------------------------- CLI
def run_cli(add, run, argv, capsys):
    parser = argparse.ArgumentParser()
    add(parser)
    rc = run(parser.parse_args(argv))
    return rc, capsys.readouterr().out


def test_cli_sample_json(capsys):
    argv = ["--blocks", "6", "--sum-range", "0.6", "4.2", "--count", "5", "--seed", "3", "--json"]
    rc, out = run_cli(add_sample_arguments, run_sample, argv, capsys)
    vectors = json.loads(out)
    assert rc == 0 and len(vectors) == 5 and all(len(v) == 6 for v in vectors)
    assert vectors == [list(v) for v in uniform_sum_sample(6, (0.6, 4.2), count=5, seed=3)]
    assert all(6 <= sum(as_ints(v)) <= 42 for v in vectors)
    rc, out = run_cli(
        add_sample_arguments, run_sample, argv[:2] + ["--naive", "--count", "4", "--seed", "1", "--json"], capsys
    )
    assert rc == 0 and json.loads(out) == [list(v) for v in naive_sample(6, count=4, seed=1)]


def test_cli_sample_text_and_missing_range(capsys):
    rc, out = run_cli(
        add_sample_arguments, run_sample, ["--blocks", "3", "--sum-range", "0.5", "0.5", "--seed", "0"], capsys
    )
    assert rc == 0 and out.strip().endswith("(sum 0.5)") and len(out.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="^--sum-range:"):
        run_cli(add_sample_arguments, run_sample, ["--blocks", "3"], capsys)


def test_cli_eqbits(capsys):
    argv = ["--gmacs", *map(str, SWIN_T_GMACS), "--c", "3", "--ratios", *["0.5"] * 6, "--base-bits", "4", "--json"]
    rc, out = run_cli(add_eqbits_arguments, run_eqbits, argv, capsys)
    assert rc == 0 and json.loads(out) == {"eq_bits": equivalent_bits(SWIN_T_GMACS, 3, [0.5] * 6, 4)}
    rc, out = run_cli(add_eqbits_arguments, run_eqbits, argv[:-1] + ["--method", "sparsevit"], capsys)
    assert rc == 0 and "equivalent activation bits: 2.0695" in out  # 4·(0.5·83.36 + 3)/86.36
    with pytest.raises(ConfigError, match="^ratios: length"):
        run_cli(add_eqbits_arguments, run_eqbits, argv[:9] + ["--ratios", "0.1", "--base-bits", "4"], capsys)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--blocks", "0", "--naive"], r"^blocks must be an integer >= 1, got 0$"),
        (["--blocks", "3", "--naive", "--count", "0"], r"^count must be an integer >= 1, got 0$"),
        (["--blocks", "3", "--naive", "--count", "-1"], r"^count must be an integer >= 1, got -1$"),
    ],
)
def test_cli_sample_refuses_zero_blocks_or_vectors(argv, message, capsys):
    with pytest.raises(ConfigError, match=message):
        run_cli(add_sample_arguments, run_sample, argv, capsys)
