"""Evol-Q as a method: ``compress_`` with an EvolQConfig (PTQ with its recipe, then the search) and the job
runner's folder, on the shipped vit-fmnist (1 pass, 1 cycle, 32 calibration images)."""

import json

import pytest
import torch
from torch.utils.data import Subset

import vitcompress
from vitcompress.config import get_preset
from vitcompress.data import DEFAULT_FMNIST_ROOT, calibration_subset, load_dataset
from vitcompress.errors import ConfigError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.methods.evolq import EvolQConfig, EvolQResult, evolq_
from vitcompress.models import input_spec_of, load_model
from vitcompress.models.source import ModelSource
from vitcompress.models.zoo import ZOO
from vitcompress.quantize import quantize_, recipe_of, restore

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() or not ZOO["vit-fmnist"].checkpoint.is_file(),
    reason="needs dataset-fashion-mnist and the shipped vit-fmnist checkpoint",
)
pytestmark = [ready, pytest.mark.usefixtures("one_thread")]

CONFIG = EvolQConfig(recipe=get_preset("w4a8"), passes=1, cycles=1, calib_size=32)
METRICS = {"ptq_top1", "ptq_seconds", "evolq", "evolq_seconds"}


@pytest.fixture(scope="module")
def data():
    spec = input_spec_of(load_model("vit-fmnist"))
    return calibration_subset(load_dataset(spec, "train"), 32, seed=0), Subset(load_dataset(spec, "test"), range(50))


def scales(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.endswith("weight_quantizer.scale")}


def test_compress_quantizes_then_searches_as_the_building_blocks_do(data, tmp_path):
    calib, test = data
    model = load_model("vit-fmnist")
    result = vitcompress.compress_(model, CONFIG, calib, eval_data=test, state_dir=tmp_path)
    assert result.method == "evolq" and result.model is model and result.config == CONFIG
    assert recipe_of(model).name == "w4a8" and isinstance(result.plan, EvolQResult)
    m = result.metrics
    assert set(m) == METRICS and m["ptq_seconds"] > 0 and m["evolq_seconds"] == result.plan.seconds
    h = m["evolq"]["history"]
    assert [e["pass"] for e in h] == [0, 1] and m["ptq_top1"] == h[0]["top1"] and h[1]["fitness"] <= h[0]["fitness"]
    assert m["evolq"]["evaluations"] == 6 and m["evolq"]["config"]["recipe"]["name"] == "w4a8"
    assert (tmp_path / "evolq_state.pt").is_file() and set(result.files) == {"evolq_passes.png"}
    assert "## Evol-Q" in result.report and "| 1 | " in result.report and "after PTQ" in result.report
    # the building blocks, PTQ then evolq_, give the same model
    ref = quantize_(load_model("vit-fmnist"), get_preset("w4a8"), calib)
    plan = evolq_(ref, calib, CONFIG)
    assert all(torch.equal(plan.scales[k], result.plan.scales[k]) for k in plan.scales)
    a, b = scales(model), scales(ref)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming the finished run: no new work, the same scales; the PTQ top-1 is measured again, equal
    again = vitcompress.compress_(
        load_model("vit-fmnist"), CONFIG, calib, eval_data=test, state_dir=tmp_path, resume=True
    )
    assert again.plan.resumed and again.metrics["ptq_top1"] == m["ptq_top1"]
    assert all(torch.equal(again.plan.scales[k], plan.scales[k]) for k in plan.scales)


def test_quantized_model_needs_no_recipe_and_a_float_one_does(data):
    calib, _ = data
    model = quantize_(load_model("vit-fmnist"), get_preset("w4a8"), calib)
    result = vitcompress.compress_(model, EvolQConfig(passes=1, cycles=1, calib_size=32), calib)
    assert result.metrics["ptq_seconds"] is None and result.metrics["ptq_top1"] is None  # no PTQ, no eval data
    with pytest.raises(ConfigError, match="recipe: the model is quantized with recipe 'w4a8' already"):
        vitcompress.compress_(model, EvolQConfig(recipe=get_preset("w8a8"), passes=1, calib_size=32), calib)
    with pytest.raises(ConfigError, match="recipe: Evol-Q refines a quantized model"):
        vitcompress.compress_(load_model("vit-fmnist"), EvolQConfig(passes=1, calib_size=32), calib)


def test_run_job_writes_the_folder_and_resumes(tmp_path):
    out = tmp_path / "run"
    job = JobConfig(source=ModelSource("vit-fmnist"), out=str(out), calib_size=32, seed=0, limit=100)
    result = run_job(job, CONFIG)
    names = {p.name for p in out.iterdir()}
    assert names >= {
        "model",
        "metrics.json",
        "report.md",
        "bits_per_layer.png",
        "sqnr_per_layer.png",
        "evolq_passes.png",
        "evolq_state.pt",
    }
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "evolq" and m["recipe"] == "w4a8" and m["calib_size"] == 32 and m["eval_images"] == 100
    assert set(m) >= METRICS | {"fp_top1", "q_top1", "rel_bops", "seconds"}
    h = m["evolq"]["history"]
    assert h[0]["top1"] == m["ptq_top1"] and h[-1]["top1"] == m["q_top1"]  # the same 100 test images
    report = (out / "report.md").read_text()
    assert "## Evol-Q" in report and "![evolq_passes.png](evolq_passes.png)" in report
    saved = restore(out / "model")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(saved(x), result.model(x))
    again = run_job(
        JobConfig(source=ModelSource("vit-fmnist"), out=str(out), calib_size=32, seed=0, limit=100, resume=True), CONFIG
    )
    assert again.metrics["evolq"]["resumed"] and again.metrics["q_top1"] == m["q_top1"]
    assert all(torch.equal(again.plan.scales[k], result.plan.scales[k]) for k in result.plan.scales)
    # the saved quantized model is refined further, without a recipe
    more = run_job(
        JobConfig(source=ModelSource(str(out)), out=str(tmp_path / "more"), calib_size=32, limit=100),
        EvolQConfig(passes=1, cycles=1, calib_size=32, seed=1),
    )
    assert more.metrics["ptq_seconds"] is None and more.metrics["recipe"] == "w4a8"
    assert more.metrics["ptq_top1"] == m["q_top1"] and more.metrics["evolq"]["history"][0]["top1"] == m["q_top1"]


def test_evolq_on_top_of_reparameterization_log_sqrt2_and_reconstruction(data, tmp_path):
    """Issue 17's techniques compose with Evol-Q: its PTQ step runs them (a short reconstruction here), the
    search then moves the reconstructed model's scales, and the result saves and restores exactly."""
    from dataclasses import replace

    from vitcompress.config import Reconstruction
    from vitcompress.quantize import save

    calib, test = data
    recipe = replace(get_preset("recon-w4a4"), reconstruction=Reconstruction(iters=5, batch_size=16))
    model = load_model("vit-fmnist")
    norm_before = model.blocks[0].norm1.weight.detach().clone()
    result = vitcompress.compress_(model, EvolQConfig(recipe=recipe, passes=1, cycles=1, calib_size=32), calib,
                                   eval_data=test, state_dir=tmp_path / "state")  # fmt: skip
    assert recipe_of(model).reparam and recipe_of(model).probs.scheme == "log_sqrt2"
    assert not torch.equal(model.blocks[0].norm1.weight, norm_before)  # the LayerNorm was reparameterized
    h = result.metrics["evolq"]["history"]
    assert [e["pass"] for e in h] == [0, 1] and h[1]["fitness"] <= h[0]["fitness"]  # the search ran and kept the best
    save(model, tmp_path / "m")
    x = next(iter(torch.utils.data.DataLoader(test, batch_size=8)))[0]
    with torch.no_grad():
        assert torch.equal(restore(tmp_path / "m")(x), model(x))
