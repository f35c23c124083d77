"""MixA-Q search: NSGA-II over ratio vectors (pymoo), resume, outputs, the held-out split."""

import json
import math

import pytest
import timm
import torch

from vitcompress.config import get_preset
from vitcompress.data.datasets import calibration_subset
from vitcompress.errors import ConfigError, DataError, StateError
from vitcompress.methods.mixaq.model import get_ratios, mixaq_
from vitcompress.methods.mixaq.search import (
    MixAQSearchConfig,
    initial_population,
    pareto_front,
    search_ratios,
)
from vitcompress.methods.mixaq.step import held_out_subset, model_evaluator

pytestmark = pytest.mark.usefixtures("one_thread")


def fake_objective(ratios):
    """Accuracy falls with the square of the ratios (unevenly per group), BOPs linearly: a real trade-off."""
    top1 = 90.0 - sum((i + 1) * r * r for i, r in enumerate(ratios)) + 0.1 * math.sin(7 * sum(ratios))
    return top1, int(1_000_000 * (1 - 0.5 * sum(ratios) / len(ratios)))


class Interrupt(Exception):
    pass


def counting(limit):
    calls = []

    def objective(ratios):
        if len(calls) >= limit:
            raise Interrupt
        calls.append(ratios)
        return fake_objective(ratios)

    return objective, calls


def test_search_finds_a_front_and_writes_outputs(tmp_path):
    config = MixAQSearchConfig(population=8, generations=3, seed=1)
    objective, calls = counting(10_000)
    result = search_ratios(objective, 6, config, out=tmp_path)
    assert len(calls) == len(set(calls)) == len(result.evaluated) + 1  # +1: the ratio-0 baseline, once each
    assert result.baseline["ratios"] == [0.0] * 6 and result.baseline["rel_bops"] == 1.0
    assert {p["generation"] for p in result.evaluated} == {0, 1, 2, 3}
    for p in result.evaluated:
        assert all(0 <= r <= 0.8 and round(r * 10) == pytest.approx(r * 10) for r in p["ratios"])
    front = result.front
    assert front == pareto_front(result.evaluated)
    for a, b in zip(front, front[1:]):  # along the front: more BOPs buys more accuracy
        assert a["bops"] <= b["bops"] and a["top1"] <= b["top1"]
    for name in ("pareto.json", "pareto.png", "chosen.json", "state.json"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "pareto.json").read_text())
    assert saved["front"] == front
    chosen = json.loads((tmp_path / "chosen.json").read_text())["chosen"]
    for target, p in chosen.items():
        assert p is None or p["rel_bops"] <= float(target)


def test_uniform_sum_initial_population_spans_the_sum_range():
    pop = initial_population(6, MixAQSearchConfig(population=200, seed=0))
    sums = pop.sum(axis=1)
    assert pop.min() >= 0 and pop.max() <= 8
    assert sums.min() >= 6 and sums.max() <= 42  # (0.6, 4.2) on the x10 scale, MixA-Q supplementary §6.1
    naive = initial_population(6, MixAQSearchConfig(population=200, seed=0, init="naive"))
    # naive sums pile up around 6 * 4 = 24; uniform-sum ones are flat over 6..42
    assert abs(naive.sum(axis=1) - 24).mean() < abs(sums - 24).mean()


def test_interrupted_search_resumes_to_the_same_end(tmp_path):
    config = MixAQSearchConfig(population=6, generations=3, seed=3)
    reference = search_ratios(fake_objective, 4, config, out=tmp_path / "ref")
    objective, calls = counting(14)  # dies during generation 1 or 2, after at least one saved generation
    with pytest.raises(Interrupt):
        search_ratios(objective, 4, config, out=tmp_path / "run")
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["generation"] >= 2 and len(state["cache"]) >= 6  # at least the initial population is saved
    paid, again = counting(10_000)
    resumed = search_ratios(paid, 4, config, out=tmp_path / "run", resume=True)
    assert len(again) == len(reference.evaluated) + 1 - len(state["cache"])  # nothing evaluated twice
    assert resumed.front == reference.front
    assert [p["ratios"] for p in resumed.evaluated] == [p["ratios"] for p in reference.evaluated]
    with pytest.raises(StateError, match="other settings"):
        search_ratios(
            fake_objective, 4, MixAQSearchConfig(population=6, generations=3, seed=4), out=tmp_path / "run", resume=True
        )


def test_config_errors():
    with pytest.raises(ConfigError, match="init must be one of"):
        MixAQSearchConfig(init="random")
    with pytest.raises(ConfigError, match="population must be an integer >= 2"):
        MixAQSearchConfig(population=1)
    with pytest.raises(ConfigError, match="upper"):
        MixAQSearchConfig(upper=0.85)
    with pytest.raises(ConfigError, match=r"targets\[1\] must be a finite number > 0 and <= 1"):
        MixAQSearchConfig(targets=(0.9, 1.5))
    with pytest.raises(ConfigError, match="cost_range"):
        MixAQSearchConfig(cost_range=(0.9, 0.5))


def test_held_out_images_are_the_next_ones_of_the_calibration_permutation():
    """The split every MixA-Q search used: one seeded permutation, calibration first, held-out next."""
    data = list(range(100))
    for seed in (0, 7):
        order = torch.randperm(100, generator=torch.Generator().manual_seed(seed)).tolist()
        calib = calibration_subset(data, 16, seed=seed)
        assert calib.indices == order[:16]
        assert held_out_subset(calib, 24, seed).indices == order[16:40]
    other = held_out_subset(calibration_subset(data, 16, seed=0), 24, seed=1)  # another seed: still disjoint
    assert len(other) == 24 and not set(other.indices) & set(calibration_subset(data, 16, seed=0).indices)
    with pytest.raises(DataError, match="eval_images is 85"):
        held_out_subset(calibration_subset(data, 16, seed=0), 85, 0)


def test_model_evaluator_on_tiny_swin(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        num_classes=10,
    ).eval()
    data = [(torch.randn(3, 32, 32), i % 10) for i in range(40)]
    calib = calibration_subset(data, 16, seed=0)
    heldout = held_out_subset(calib, 24, seed=0)
    assert not set(calib.indices) & set(heldout.indices)
    mixaq_(model, calib, get_preset("w8a8"), 4)
    batches = [(torch.stack([x for x, _ in heldout]), torch.tensor([y for _, y in heldout]))]
    evaluate = model_evaluator(model, batches)
    top1_0, bops_0 = evaluate((0.0, 0.0))
    top1_8, bops_8 = evaluate((0.8, 0.8))
    assert get_ratios(model)[0] == [0.8, 0.8]
    assert bops_8 < bops_0 and 0 <= top1_8 <= 100
    result = search_ratios(evaluate, 2, MixAQSearchConfig(population=4, generations=1), out=tmp_path)
    assert result.front and all(p["bops"] < bops_0 or p["ratios"] == [0.0, 0.0] for p in result.evaluated)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '{"fingerprint": {"tag": "x"},\n "cache": [',
            r"^MixA-Q search state .*state\.json: JSON syntax error at line 2",
        ),
        ("[1, 2]", r"state\.json was written by a search with other settings"),
        ('{"fingerprint": {"tag": "x"}, "cache": [{"ratios": [0.1]}]}', r"search state .*state\.json is corrupt"),
    ],
)
def test_a_corrupt_search_state_is_one_line_naming_the_file(tmp_path, text, message):
    from vitcompress.methods.mixaq.search import _read_cache

    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(StateError, match=message) as e:
        _read_cache(path, {"tag": "x"})
    assert "\n" not in str(e.value)
