"""MixA-Q as a method: ``compress_`` with a MixAQConfig, the job runner's folder (and resume), save and
restore, the command line."""

import dataclasses
import json

import pytest
import torch
from torch.utils.data import Subset

import vitcompress
from vitcompress.cli import main
from vitcompress.data import DEFAULT_FMNIST_ROOT, calibration_subset, load_dataset
from vitcompress.errors import ConfigError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.methods.mixaq import MixAQConfig, MixAQSearchConfig, get_ratios, mixed_cost
from vitcompress.models import input_spec_of, load_model
from vitcompress.models.source import ModelSource
from vitcompress.models.zoo import ZOO
from vitcompress.quantize import restore

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() or not ZOO["swin-fmnist"].checkpoint.is_file(),
    reason="needs dataset-fashion-mnist and the shipped swin-fmnist checkpoint",
)
pytestmark = [ready, pytest.mark.usefixtures("one_thread")]

# small but real: 32 calibration images, 64 held-out images, 2 candidates
CONFIG = MixAQConfig(eval_images=64, search=MixAQSearchConfig(population=2, generations=0))
STATE_FILES = {"state.json", "pareto.json", "chosen.json", "pareto.png"}


@pytest.fixture(scope="module")
def data():
    spec = input_spec_of(load_model("swin-fmnist"))
    train = load_dataset(spec, "train")
    return calibration_subset(train, 32, seed=0), Subset(load_dataset(spec, "test"), range(64))


def test_compress_runs_mixaq_on_swin_fmnist(data, tmp_path):
    calib, test = data
    model = load_model("swin-fmnist")
    result = vitcompress.compress_(model, CONFIG, calib, eval_data=test, state_dir=tmp_path)
    assert result.method == "mixaq" and result.model is model and not result.layer_report
    m = result.metrics
    held, chosen = m["held_out"], m["chosen"]
    assert held["evaluated"] >= 1 and held["baseline"]["rel_bops"] == 1.0
    assert chosen["target"] == 0.8 and chosen["found"] == (held["chosen"]["0.8"] is not None)
    # the model is left at the chosen ratios and costed there
    assert result.plan == chosen["ratios"] == get_ratios(model)[0]
    assert result.cost.bops == mixed_cost(model).bops
    if chosen["found"]:
        assert result.cost.bops == held["chosen"]["0.8"]["bops"] and chosen["rel_bops"] <= 0.8
    assert set(m["test"]) >= {"baseline"} and all(0 <= p["top1"] <= 100 for p in m["test"].values())
    assert m["config"]["search"]["population"] == 2 and m["config"]["recipe"] == "w8a8"
    assert {p.name for p in tmp_path.iterdir()} == STATE_FILES
    # the search's identity is the one a search written before the move has: old folders resume
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["fingerprint"]["tag"] == "swin-fmnist|w8a8|A4|calib 32|eval 64|0.8"
    assert state["fingerprint"]["config"] == json.loads(json.dumps(dataclasses.asdict(CONFIG.search)))
    assert "## MixA-Q" in result.report and set(result.files) == {"summary.json", "pareto.png"}
    assert model.vitcompress_layout["ratios"] == result.plan  # what save() writes as layout.json


def test_config_and_data_errors(data):
    calib, _ = data
    with pytest.raises(ConfigError, match="choose must be one of the search targets"):
        MixAQConfig(choose=0.5)
    with pytest.raises(ConfigError, match="low_bits must be an integer >= 2 and <= 8"):
        MixAQConfig(low_bits=9)
    with pytest.raises(ConfigError, match="eval_images"):
        MixAQConfig(eval_images=0)
    with pytest.raises(ConfigError, match="held-out training images"):  # no Subset, no train_data
        vitcompress.compress_(load_model("swin-fmnist"), CONFIG, [calib[i][0][None] for i in range(4)])


@pytest.mark.slow
def test_run_job_writes_a_folder_that_restores_and_resumes(tmp_path):
    job = JobConfig(ModelSource("swin-fmnist"), out=str(tmp_path), calib_size=32, limit=64)
    config = dataclasses.replace(CONFIG, search=MixAQSearchConfig(population=2, generations=1))
    result = run_job(job, config)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == "mixaq" and m["calib_size"] == 32 and m["eval_images"] == 64
    assert m["q_top1"] == m["test"]["0.8" if m["chosen"]["found"] else "baseline"]["top1"]  # the same 64 images
    assert m["bops"] == result.cost.bops and "held_out" in m and "layers" not in m
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= STATE_FILES | {"summary.json", "metrics.json", "report.md", "model"}
    assert not names & {"bits_per_layer.png", "sqnr_per_layer.png"}
    assert "![pareto.png](pareto.png)" in (tmp_path / "report.md").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["held_out"] == m["held_out"] and summary["test"] == m["test"]
    # the saved model comes back with its two-branch blocks, scales and ratios
    x = torch.stack([load_dataset(input_spec_of(result.model), "test")[i][0] for i in range(8)])
    restored = restore(tmp_path / "model")
    assert get_ratios(restored) == get_ratios(result.model)
    assert torch.equal(restored(x), result.model.eval()(x))
    # a finished search resumes to the same end without evaluating anything again
    state = (tmp_path / "state.json").read_text()
    again = run_job(dataclasses.replace(job, resume=True), config)
    assert again.metrics["held_out"] == m["held_out"] and again.plan == result.plan
    assert (tmp_path / "state.json").read_text() == state


@pytest.mark.slow
def test_cli_compress_mixaq(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "compress",
        "mixaq",
        "--model",
        "swin-fmnist",
        "--recipe",
        "w8a8",
        "--low-bits",
        "4",
        "--calib-size",
        "32",
        "--eval-images",
        "64",
        "--limit",
        "64",
        "--population",
        "2",
        "--generations",
        "0",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "configurations evaluated on 64 held-out images" in text and "model set to the point chosen" in text
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["search"]["seed"] == 0 and m["config"]["low_bits"] == 4
    assert main([*args, "--resume", "--seed", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["held_out"] == m["held_out"]


def test_cli_compress_mixaq_help_and_tools(capsys):
    with pytest.raises(SystemExit):
        main(["compress", "mixaq", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--recipe",
        "--low-bits",
        "--eval-images",
        "--choose",
        "--population",
        "--generations",
        "--init",
        "--cost-range",
        "--targets",
    ):
        assert flag in text
    assert main(["mixaq", "sample", "--blocks", "6", "--sum-range", "0.6", "4.2", "--seed", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]) == 6
    assert main(["mixaq", "eqbits", "--gmacs", "1", "1", "--c", "0", "--ratios", "1", "1", "--base-bits", "8"]) == 0
    assert "equivalent activation bits: 4.0000" in capsys.readouterr().out
