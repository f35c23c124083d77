"""F-LBQ as a method: ``compress_`` with an FLBQConfig, the job runner's folder, the command line."""

import json

import pytest
import torch

import vitcompress
from vitcompress.cli import main
from vitcompress.data import DEFAULT_FMNIST_ROOT, calibration_subset, load_dataset
from vitcompress.errors import ConfigError, StateError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.methods.flbq import BitPlan, Curves, FLBQConfig, allocate_bits, plan_to_recipe
from vitcompress.methods.flbq.apply import base_recipe
from vitcompress.methods.flbq.step import curves_key
from vitcompress.models import input_spec_of, load_model
from vitcompress.models.source import ModelSource
from vitcompress.models.zoo import ZOO
from vitcompress.nn.convert import quantization_points
from vitcompress.quantize import quantize_, restore

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() or not ZOO["vit-fmnist"].checkpoint.is_file(),
    reason="needs dataset-fashion-mnist and the shipped vit-fmnist checkpoint",
)
pytestmark = [ready, pytest.mark.usefixtures("one_thread")]

# small but real: 25 layer units x 4 widths on 16 images
CONFIG = FLBQConfig(budget=3, bits=(2, 3, 4, 8), n_images=16)
METHOD_KEYS = {
    "config",
    "units",
    "avg_bits",
    "predicted_distortion",
    "measured_distortion",
    "solver_seconds",
    "plans",
    "curve_seconds",
    "curve_monotone_fixes",
    "ptq_seconds",
    "layer_bits",
}
FILES = {"plan.json", "plan_dp.json", "plan_lg.json", "bits_per_layer.png"}


@pytest.fixture(scope="module")
def calib():
    spec = input_spec_of(load_model("vit-fmnist"))
    return calibration_subset(load_dataset(spec, "train"), 64, seed=0)


def test_compress_runs_flbq_and_reuses_its_curves(calib, tmp_path):
    model = load_model("vit-fmnist")
    result = vitcompress.compress_(model, CONFIG, calib, state_dir=tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"curves.json", "curves.meta.json"}
    # the building block on the same curves gives the same plan
    reference = allocate_bits(load_model("vit-fmnist"), None, CONFIG, curves=Curves.from_json(tmp_path / "curves.json"))
    m = result.metrics
    assert result.method == "flbq" and result.model is model and result.config == CONFIG
    assert isinstance(result.plan, BitPlan) and result.plan.bits == reference.bits and result.plan.solver == "dp"
    assert set(m) >= METHOD_KEYS and m["units"] == 25 and m["avg_bits"] == result.plan.avg_bits <= 3
    assert m["config"]["budget"] == 3 and set(m["plans"]) == set(m["layer_bits"]) == {"dp", "lg"}
    assert m["measured_distortion"] > 0 and m["predicted_distortion"] > 0 and not m["curves_reused"]
    assert set(result.files) == FILES and result.files["plan.json"] == result.plan.to_dict()
    assert "## F-LBQ bit allocation: budget 3 bits, unit `layer`, solver DP" in result.report
    assert "| `blocks.5.mlp.fc2` |" in result.report
    points = dict(quantization_points(model))
    assert points["blocks.0.attn.qkv.weight"].spec.observer == "mse" and points["head.weight"].spec.bits == 8
    # the same quantization as the building blocks give
    q = load_model("vit-fmnist")
    quantize_(q, plan_to_recipe(reference, q, base_recipe(8)), calib)
    x = torch.stack([calib[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(q(x), model(x))
    again = vitcompress.compress_(load_model("vit-fmnist"), CONFIG, calib, state_dir=tmp_path)
    assert again.metrics["curves_reused"] and again.metrics["curve_seconds"] == m["curve_seconds"]
    assert again.plan.bits == result.plan.bits and again.metrics["measured_distortion"] == m["measured_distortion"]
    # what the cached curves depend on: other images, weights or settings change the key
    fp = load_model("vit-fmnist")
    key = json.loads((tmp_path / "curves.meta.json").read_text())["key"]
    assert curves_key(fp, calib, CONFIG) == key
    other = calibration_subset(load_dataset(input_spec_of(fp), "train"), 64, seed=1)
    assert curves_key(fp, other, CONFIG)["images"] != key["images"]
    assert curves_key(fp, calib, FLBQConfig(budget=2, bits=(2, 3, 4, 8), n_images=16)) == key  # budget: not a key
    assert curves_key(fp, calib, FLBQConfig(budget=3, n_images=16))["bits"] != key["bits"]
    with torch.no_grad():
        fp.head.bias.add_(1.0)
    assert curves_key(fp, calib, CONFIG)["weights"] != key["weights"]
    with pytest.raises(ConfigError, match="F-LBQ needs calibration images"):
        vitcompress.compress_(fp, CONFIG, None)
    with pytest.raises(StateError, match="measured on the float model"):
        vitcompress.compress_(model, CONFIG, calib)  # quantized already


def test_run_job_writes_the_folder(tmp_path):
    out = tmp_path / "run"
    job = JobConfig(source=ModelSource("vit-fmnist"), out=str(out), calib_size=64, limit=200)
    result = run_job(job, FLBQConfig(budget=3, solver="lg", bits=(2, 3, 4, 8), n_images=16, margin=1))
    assert {p.name for p in out.iterdir()} >= FILES | {
        "curves.json",
        "curves.meta.json",
        "model",
        "metrics.json",
        "report.md",
        "sqnr_per_layer.png",
    }
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "flbq" and m["recipe"] == "flbq-lg-3" and m["eval_images"] == 200 and m["calib_size"] == 64
    assert set(m) >= METHOD_KEYS and abs(m["avg_bits"] - 3) <= 0.02 and m["config"]["margin"] == 1
    plan = BitPlan.from_dict(json.loads((out / "plan.json").read_text()))
    assert plan.avg_bits == m["avg_bits"] and plan.min_bits == 2 and plan.solver == "lg"
    assert BitPlan.from_dict(json.loads((out / "plan_dp.json").read_text())).solver == "dp"
    assert len(Curves.from_json(out / "curves.json")) == 25
    report = (out / "report.md").read_text()
    assert report.index("# vitcompress report") < report.index("## F-LBQ bit allocation") and "LG bits" in report
    test = load_dataset(input_spec_of(result.model), "test")
    x = torch.stack([test[i][0] for i in range(4)])
    with torch.no_grad():
        assert torch.equal(restore(out / "model")(x), result.model(x))


def test_cli_declares_the_flbq_options_and_the_allocate_tool(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compress", "flbq", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert all(
        f in text
        for f in (
            "--budget",
            "--unit",
            "--solver",
            "--bits",
            "--min-bits",
            "--margin",
            "--eps",
            "--n-images",
            "--act-bits",
            "--head-bits",
            "--target",
            "--exclude",
            "--out",
        )
    )
    curves = Curves.from_json(
        {
            "units": [
                {
                    "name": f"u{i}",
                    "size": 10 * (i + 1),
                    "bits": [2, 4, 8],
                    "distortion": [4.0 / (i + 1), 1.0 / (i + 1), 0.0],
                }
                for i in range(3)
            ]
        }
    )
    curves.to_json(tmp_path / "curves.json")
    assert main(["allocate", "--curves", str(tmp_path / "curves.json"), "--budget", "4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["solver"] == "dp" and plan["avg_bits"] <= 4 and set(plan["bits"]) == {"u0", "u1", "u2"}
    assert main(["allocate", "--curves", str(tmp_path / "curves.json"), "--budget", "9"]) == 2
    assert "outside the feasible range" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_compress_flbq_then_allocate_on_its_curves(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [
        "compress",
        "flbq",
        "--model",
        "vit-fmnist",
        "--budget",
        "3",
        "--bits",
        "2",
        "3",
        "4",
        "8",
        "--n-images",
        "16",
        "--calib-size",
        "64",
        "--limit",
        "200",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["avg_bits"] <= 3.0 and m["units"] == 25 and m["eval_images"] == 200 and m["config"]["n_images"] == 16
    assert f"outputs in {out}" in capsys.readouterr().out
    assert (
        main(
            [
                "allocate",
                "--curves",
                str(out / "curves.json"),
                "--budget",
                "2.5",
                "--solver",
                "lg",
                "--margin",
                "1",
                "--out",
                str(tmp_path / "plan.json"),
                "--json",
            ]
        )
        == 0
    )
    plan = json.loads(capsys.readouterr().out)
    assert abs(plan["avg_bits"] - 2.5) <= 0.02 and min(plan["bits"].values()) >= 2 and plan["solver"] == "lg"
    assert BitPlan.from_dict(json.loads((tmp_path / "plan.json").read_text())).bits == plan["bits"]


def test_a_base_recipe_carries_its_activations_and_reconstruction_under_the_plan(calib, tmp_path):
    # --base recon-w4a4: the planned weight bits on RepQ-ViT's activations, then block reconstruction (3 steps)
    from dataclasses import replace

    from vitcompress.config import Reconstruction, get_preset
    from vitcompress.quantize import recipe_of

    base = replace(get_preset("recon-w4a4"), reconstruction=Reconstruction(iters=3, batch_size=16))
    config = FLBQConfig(budget=3, bits=(2, 3, 4, 8), n_images=16, base=base)
    model = load_model("vit-fmnist")
    result = vitcompress.compress_(model, config, calib, state_dir=tmp_path)
    recipe = recipe_of(model)
    assert recipe.reparam and recipe.probs.scheme == "log_sqrt2" and recipe.reconstruction is not None
    assert (tmp_path / "recon_state.pt").is_file()  # reconstruction kept its resumable state in the job's folder
    points = dict(quantization_points(model))
    planned = {f"{n}.weight": b for n, b in result.metrics["layer_bits"]["dp"].items() if b == int(b)}
    assert planned and all(points[n].spec.bits == b for n, b in planned.items())  # the plan's layer bits, kept
    assert FLBQConfig(budget=3, base="recon-w4a4").base == get_preset("recon-w4a4")  # a preset name parses
