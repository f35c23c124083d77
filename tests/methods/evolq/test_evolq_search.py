"""Evol-Q's search (``evolq_``): config, fitness, search invariants, determinism, resume, errors.

Everything runs on tiny random timm models (dim 24, 2 blocks) quantized at w4a8 with random images,
so the module takes a few seconds.
"""

import json
import math

import pytest
import timm
import torch
from torch.utils.data import TensorDataset

from tiny_models import tiny_swin16 as tiny_swin
from tiny_models import tiny_vit16 as tiny_vit
from vitcompress.config import get_preset
from vitcompress.errors import ConfigError, StateError
from vitcompress.methods.evolq import EvolQConfig, evolq_, fitness_fn, infonce
from vitcompress.methods.evolq.state import fingerprints
from vitcompress.quant import Quantizer
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = dict(
    passes=2, cycles=3, population=4, tournament=3, calib_size=48, batch_size=16, mutation_low_bits=2e-3
)  # 2e-3: large enough that tiny random models move


def images(n: int = 48, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 1, 16, 16, generator=g) for _ in range(n // 16)]


def quantized(make=tiny_vit, seed: int = 0):
    return quantize_(make(seed), get_preset("w4a8"), images())


def scales(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith("weight_quantizer.scale")}


def full_fitness(model, batches, name="infonce") -> float:
    """Fitness recomputed from scratch: whole quantized model vs whole float model."""
    fn = fitness_fn(name, 3.0)
    qzs = [m for m in model.modules() if isinstance(m, Quantizer)]
    with torch.no_grad():
        zq = [model(x) for x in batches]
        for q in qzs:
            q.enabled = False
        zf = [model(x) for x in batches]
        for q in qzs:
            q.enabled = True
    return sum(float(fn(a, b)) for a, b in zip(zq, zf)) / len(batches)


# ---- config ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("fitness", "l1", "['infonce', 'mse', 'cosine', 'kl']"),
        ("block_order", "random", "['last_to_first', 'first_to_last']"),
        ("mutation_mode", "log", "['absolute', 'relative']"),
        ("targets", ("attn.qkv", "head"), "'mlp.fc2'"),
        ("passes", 0, "integer >= 1"),
        ("temperature", -1.0, "number > 0"),
        ("recipe", "w4a8", "Recipe or None"),
    ],
)
def test_config_rejects_bad_values_naming_field(field, value, allowed):
    with pytest.raises(ConfigError, match=field) as e:
        EvolQConfig(**{field: value})
    assert allowed in str(e.value)


def test_config_defaults_are_the_papers_and_round_trip():
    c = EvolQConfig()
    assert (c.passes, c.cycles, c.population, c.tournament, c.temperature, c.calib_size) == (10, 3, 15, 10, 3.0, 1000)
    assert c.mutation_width(3) == c.mutation_width(4) == 1e-3 and c.mutation_width(8) == 1e-4
    assert c.targets == ("attn.qkv", "attn.proj") and c.block_order == "last_to_first" and c.recipe is None
    d = EvolQConfig(fitness="kl", targets=["attn.qkv", "mlp.fc1"]).to_dict()
    assert EvolQConfig.from_dict(d) == EvolQConfig(fitness="kl", targets=("attn.qkv", "mlp.fc1"))
    with_recipe = EvolQConfig(recipe=get_preset("w4a8"), passes=2)
    assert EvolQConfig.from_dict(json.loads(json.dumps(with_recipe.to_dict()))) == with_recipe
    # the state fingerprints the search settings without the recipe (it is fingerprinted from the model)
    assert with_recipe.search_dict() == EvolQConfig(passes=2).search_dict()
    assert "recipe" not in with_recipe.search_dict()
    del d["recipe"]
    assert EvolQConfig.from_dict(d).recipe is None  # a config written before the recipe field
    with pytest.raises(ConfigError, match="unknown key 'pases'"):
        EvolQConfig.from_dict({"pases": 3})


def test_config_fingerprint_is_the_one_states_were_written_with():
    """States written before the recipe joined the config still resume: same config fingerprint."""
    fp = fingerprints(tiny_vit(), {}, EvolQConfig(recipe=get_preset("w4a8")).search_dict(), [])["config"]
    assert fp == "73e33a966661a51e40ef062c74ef80b076f2a01098ee022bf1e38c24ab688727"  # EvolQConfig() before


# ---- fitness ---------------------------------------------------------------------------------------
def test_infonce_golden_value_and_definition():
    zq = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zf = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # cosines: row 0 -> (1, 1/√2), row 1 -> (0, 1/√2); logits = cos / T; L = CE · 2T
    t = 3.0
    l0 = -math.log(math.exp(1 / t) / (math.exp(1 / t) + math.exp(2**-0.5 / t)))
    l1 = -math.log(math.exp(2**-0.5 / t) / (1 + math.exp(2**-0.5 / t)))
    assert float(infonce(zq, zf, t)) == pytest.approx((l0 + l1) / 2 * 2 * t, rel=1e-6)
    same = torch.randn(8, 10)
    assert float(infonce(same, same)) < float(infonce(same, torch.randn(8, 10)))  # positives on the diagonal


def test_infonce_rejects_batch_of_one_naming_batch_size():
    with pytest.raises(ConfigError, match="batch size 1"):
        infonce(torch.randn(1, 10), torch.randn(1, 10))


@pytest.mark.parametrize("name", ["mse", "cosine", "kl", "infonce"])
def test_every_fitness_is_smallest_for_identical_logits(name):
    z = torch.randn(8, 10)
    fn = fitness_fn(name)
    assert float(fn(z, z)) < float(fn(z + 0.5 * torch.randn(8, 10), z))
    if name != "infonce":
        assert float(fn(z, z)) == pytest.approx(0.0, abs=1e-6)


# ---- search ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,order", [(tiny_vit, "last_to_first"), (tiny_swin, "last_to_first"), (tiny_vit, "first_to_last")]
)
def test_search_changes_only_attention_weight_scales_and_never_worsens_fitness(make, order):
    model = quantized(make)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evolq_(model, images(), EvolQConfig(**TINY, block_order=order))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(
        k.endswith(("attn.qkv.weight_quantizer.scale", "attn.proj.weight_quantizer.scale")) for k in changed
    )
    fit = [h["fitness"] for h in result.history]
    assert all(b <= a for a, b in zip(fit, fit[1:])) and fit[-1] < fit[0]
    # the fitness tracked on cached block inputs equals the whole model recomputed from scratch
    assert fit[-1] == pytest.approx(full_fitness(model, images()), rel=1e-6)
    assert fit[0] == pytest.approx(full_fitness(quantized(make), images()), rel=1e-6)
    assert result.evaluations == 2 * len(result.blocks) * 3
    assert set(result.scales) == {k.replace("_quantizer.scale", "") for k in scales(model) if ".attn." in k}


def test_distilled_deit_is_searched_through_both_heads():
    torch.manual_seed(0)
    model = timm.create_model(
        "deit_tiny_distilled_patch16_224",
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=24,
        depth=2,
        num_heads=2,
        num_classes=10,
    ).eval()
    quantize_(model, get_preset("w4a8"), images())
    result = evolq_(model, images(), EvolQConfig(**TINY))
    assert result.blocks == ["blocks.1", "blocks.0"]
    assert result.history[-1]["fitness"] == pytest.approx(full_fitness(model, images()), rel=1e-6)


def test_search_activations_and_mlp_targets_are_searched_when_asked():
    model = quantized()
    cfg = EvolQConfig(**TINY, targets=("mlp.fc1", "mlp.fc2"), search_activations=True)
    result = evolq_(model, images(), cfg)
    assert set(result.scales) == {
        f"blocks.{i}.mlp.{fc}.{p}" for i in (0, 1) for fc in ("fc1", "fc2") for p in ("weight", "input")
    }


def test_same_seed_same_scales_other_seed_other_scales_and_eval_data_never_steers():
    eval_data = [(x, torch.randint(0, 10, (len(x),))) for x in images(32, seed=7)]
    runs = [
        evolq_(quantized(), images(), EvolQConfig(**TINY, seed=s), eval_data=e)
        for s, e in ((0, None), (0, eval_data), (1, None))
    ]
    assert all(torch.equal(runs[0].scales[k], runs[1].scales[k]) for k in runs[0].scales)
    assert any(not torch.equal(runs[0].scales[k], runs[2].scales[k]) for k in runs[0].scales)
    assert [h["top1"] for h in runs[0].history] == [None] * 3
    assert all(0.0 <= h["top1"] <= 100.0 for h in runs[1].history) and len(runs[1].history) == 3


def test_result_applies_to_a_fresh_quantized_model():
    model = quantized()
    result = evolq_(model, images(), EvolQConfig(**TINY))
    fresh = quantized()
    result.apply(fresh)
    x = images()[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


# ---- errors ----------------------------------------------------------------------------------------
def test_float_model_is_an_error_saying_to_run_ptq_first():
    with pytest.raises(StateError, match=r"quantize_.*PTQ.*first"):
        evolq_(tiny_vit(), images(), EvolQConfig(**TINY))


def test_calibration_batch_of_one_with_infonce_is_an_error_naming_the_batch_size():
    with pytest.raises(ConfigError, match="batch size 1"):
        evolq_(quantized(), [torch.randn(1, 1, 16, 16)], EvolQConfig(**TINY))
    data = TensorDataset(torch.randn(49, 1, 16, 16), torch.zeros(49, dtype=torch.long))
    with pytest.raises(ConfigError, match="batch 3 has batch size 1"):  # 49 = 3 × 16 + 1
        evolq_(quantized(), data, EvolQConfig(**{**TINY, "calib_size": 49}))
    evolq_(quantized(), [torch.randn(1, 1, 16, 16)], EvolQConfig(**{**TINY, "fitness": "mse"}))


# ---- resume ----------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def _kill_after(n: int):
    seen = []

    def callback(info):
        seen.append(info)
        if len(seen) == n:
            raise Interrupt(f"killed after block {n}")

    return callback


@pytest.mark.parametrize("make,kill_after", [(tiny_vit, 3), (tiny_vit, 2), (tiny_swin, 5)])
def test_interrupted_run_resumes_to_the_same_scales_as_an_uninterrupted_one(tmp_path, make, kill_after):
    cfg = EvolQConfig(**TINY)
    reference = evolq_(quantized(make), images(), cfg)
    state = tmp_path / "evolq.pt"
    with pytest.raises(Interrupt):
        evolq_(quantized(make), images(), cfg, state_path=state, callback=_kill_after(kill_after))
    resumed_model = quantized(make)  # a new process would rebuild the PTQ model the same way
    resumed = evolq_(resumed_model, images(), cfg, state_path=state, resume=True)
    assert resumed.resumed
    assert reference.scales.keys() == resumed.scales.keys()
    assert all(torch.equal(reference.scales[k], resumed.scales[k]) for k in reference.scales)  # exact
    assert [h["fitness"] for h in resumed.history] == [h["fitness"] for h in reference.history]
    assert resumed.evaluations == reference.evaluations
    # resuming a finished run does no work and returns the same scales
    again = evolq_(quantized(make), images(), cfg, state_path=state, resume=True)
    assert all(torch.equal(again.scales[k], reference.scales[k]) for k in reference.scales)
    assert again.evaluations == reference.evaluations


def test_resume_from_another_model_or_config_is_an_error_never_a_restart(tmp_path):
    state = tmp_path / "evolq.pt"
    cfg = EvolQConfig(**{**TINY, "passes": 1})
    evolq_(quantized(), images(), cfg, state_path=state)
    written = state.read_bytes()
    with pytest.raises(StateError, match="exists.*resume"):
        evolq_(quantized(), images(), cfg, state_path=state)
    with pytest.raises(StateError, match="different Evol-Q config"):
        evolq_(quantized(), images(), EvolQConfig(**{**TINY, "passes": 1, "seed": 5}), state_path=state, resume=True)
    with pytest.raises(StateError, match="different model weights"):
        evolq_(quantized(seed=3), images(), cfg, state_path=state, resume=True)
    with pytest.raises(StateError, match="different calibration images"):
        evolq_(quantized(), images(seed=9), cfg, state_path=state, resume=True)
    other = quantize_(tiny_vit(), get_preset("w3a8"), images())
    with pytest.raises(StateError, match="different quantization recipe"):
        evolq_(other, images(), cfg, state_path=state, resume=True)
    assert state.read_bytes() == written  # nothing was overwritten
    (tmp_path / "junk.pt").write_bytes(b"not a state")
    with pytest.raises(StateError, match="junk.pt"):
        evolq_(quantized(), images(), cfg, state_path=tmp_path / "junk.pt", resume=True)


def test_state_file_is_written_atomically_after_each_block(tmp_path):
    state = tmp_path / "evolq.pt"
    sizes = []
    cfg = EvolQConfig(**{**TINY, "passes": 1})
    evolq_(
        quantized(),
        images(),
        cfg,
        state_path=state,
        callback=lambda info: sizes.append((state.is_file(), info["block"])),
    )
    assert sizes == [(True, "blocks.1"), (True, "blocks.0")]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x80\x02truncated", r"^cannot read Evol-Q state .*evolq_state\.pt: .*; remove it to start over$"),
        (b"", r"^cannot read Evol-Q state .*evolq_state\.pt: "),
        ("pickled", r"^cannot read Evol-Q state .*: it holds Python objects a weights-only load refuses"),
        ("foreign", r"evolq_state\.pt is not an Evol-Q state"),
    ],
)
def test_a_corrupt_state_is_one_line_naming_the_file(tmp_path, content, message):
    from vitcompress.methods.evolq.state import load_state

    path = tmp_path / "evolq_state.pt"
    if content == "pickled":
        torch.save({"fingerprints": StateError("x")}, path)
    elif content == "foreign":
        torch.save({"model": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(StateError, match=message) as e:
        load_state(path, {})
    assert "\n" not in str(e.value)
