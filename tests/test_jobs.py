import copy
import json

import pytest
import torch

import vitcompress as vc
from vitcompress.cli import main
from vitcompress.config import get_preset
from vitcompress.data import DEFAULT_FMNIST_ROOT, calibration_subset, load_dataset, make_loader
from vitcompress.errors import ConfigError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.models import input_spec_of, load_model
from vitcompress.models.source import ModelSource
from vitcompress.models.zoo import ZOO
from vitcompress.report.analysis import sqnr_db

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file()
    or not all(ZOO[n].checkpoint.is_file() for n in ZOO),
    reason="needs dataset-fashion-mnist and the shipped checkpoints",
)
METRIC_KEYS = {
    "model",
    "method",
    "recipe",
    "seed",
    "fp_top1",
    "q_top1",
    "fp_top5",
    "q_top5",
    "eval_images",
    "macs",
    "bops",
    "fp_bops",
    "rel_bops",
    "size_bytes",
    "fp_size_bytes",
    "calib_size",
    "seconds",
    "ptq_seconds",
}


@ready
@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_w8a8_logits_sqnr_floor(name):
    model = load_model(name)
    reference = copy.deepcopy(model)
    spec = input_spec_of(model)
    result = vc.compress_(model, get_preset("w8a8"), calibration_subset(load_dataset(spec, "train"), 256))
    assert result.model is model and result.method == "ptq" and result.plan is None
    x = next(iter(make_loader(load_dataset(spec, "test"), 128)))[0]
    with torch.no_grad():
        assert sqnr_db(reference(x), model(x)) > 20.0  # dB, every activation at 8 bit


def test_compress_rejects_a_config_of_no_method():
    with pytest.raises(ConfigError, match="config must be one of .*Recipe.*, got dict"):
        vc.compress_(torch.nn.Linear(2, 2), {"bits": 8}, None)


@ready
def test_run_job_returns_the_metrics_it_writes(tmp_path):
    job = JobConfig(ModelSource("vit-fmnist"), out=str(tmp_path / "run"), calib_size=64, limit=256)
    result = run_job(job, get_preset("w4a8"))
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(written) >= METRIC_KEYS and "layers" in written
    assert {k: v for k, v in written.items() if k not in ("layers", "seconds")} == {
        k: v for k, v in result.metrics.items() if k != "seconds"
    }
    assert result.out == tmp_path / "run" and written["method"] == "ptq" and written["eval_images"] == 256


def test_job_config_names_the_bad_field():
    with pytest.raises(ConfigError, match="limit must be an integer >= 1, got 0"):
        JobConfig(ModelSource("vit-fmnist"), limit=0)
    with pytest.raises(ConfigError, match="calib_size must be an integer >= 1, got -5"):
        JobConfig(ModelSource("vit-fmnist"), calib_size=-5)


@ready
def test_compress_cli_writes_complete_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "compress",
                "ptq",
                "--model",
                "vit-fmnist",
                "--recipe",
                "fqvit-w4a8",
                "--calib-size",
                "64",
                "--limit",
                "256",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["calib_size"] == 64 and metrics["rel_bops"] < 0.05
    assert {p.name for p in out.iterdir()} >= {
        "model",
        "metrics.json",
        "report.md",
        "bits_per_layer.png",
        "sqnr_per_layer.png",
    }
    report = (out / "report.md").read_text()
    assert "| `blocks.0.attn.qkv` | 4 | 8 |" in report
    # what is quantized: every attention block (softmax and both matmuls), nothing left in float
    assert metrics["attention_modules"] == metrics["quantized_attention"] > 0 and metrics["float_modules"] == []
    assert f"{metrics['attention_modules']} of {metrics['attention_modules']} attention blocks" in report
    assert "Every module with weights or an activation matmul is quantized." in report
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_report_lists_modules_left_in_float():
    from vitcompress.report.markdown import _coverage

    m = {"attention_modules": 2, "quantized_attention": 1, "float_modules": [{"name": "blocks.1.attn", "type":
         "Attention", "why": "attention points not quantizing: probs"}]}  # fmt: skip
    text = "\n".join(_coverage(m))
    assert "1 of 2 attention blocks" in text and "Left in float (1)" in text
    assert "| `blocks.1.attn` | Attention | attention points not quantizing: probs |" in text


@ready
def test_eval_of_saved_model_matches_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "--threads",
                "1",
                "compress",
                "ptq",
                "--model",
                "swin-fmnist",
                "--recipe",
                "w8a8",
                "--calib-size",
                "64",
                "--limit",
                "256",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--limit", "256", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == metrics["q_top1"]


def test_an_out_that_cannot_be_a_folder_is_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="out: .*file exists and is not a folder"):
        run_job(JobConfig(ModelSource("no-such-model"), out=str(tmp_path / "file")), get_preset("w8a8"))
    with pytest.raises(ConfigError, match="out: cannot create .*is not a writable folder"):
        run_job(JobConfig(ModelSource("no-such-model"), out=str(tmp_path / "file" / "sub")), get_preset("w8a8"))
