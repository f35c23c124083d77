import copy
import json

import pytest
import torch

from vitcompress.cli import main
from vitcompress.config import get_preset
from vitcompress.data import DEFAULT_FMNIST_ROOT, calibration_subset, load_dataset, make_loader
from vitcompress.models import input_spec_of, load_model
from vitcompress.models.zoo import ZOO
from vitcompress.quantize import quantize_
from vitcompress.report.analysis import sqnr_db

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file()
    or not all(ZOO[n].checkpoint.is_file() for n in ZOO),
    reason="needs dataset-fashion-mnist and the shipped checkpoints",
)
METRIC_KEYS = {"fp_top1", "q_top1", "macs", "bops", "rel_bops", "size_bytes", "fp_size_bytes", "calib_size", "seconds"}


@ready
@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_w8a8_logits_sqnr_floor(name):
    model = load_model(name)
    reference = copy.deepcopy(model)
    spec = input_spec_of(model)
    quantize_(model, get_preset("w8a8"), calibration_subset(load_dataset(spec, "train"), 256), progress=False)
    x = next(iter(make_loader(load_dataset(spec, "test"), 128)))[0]
    with torch.no_grad():
        assert sqnr_db(reference(x), model(x)) > 20.0  # dB, every activation at 8 bit


@ready
def test_compress_cli_writes_complete_outputs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", "--model", "vit-fmnist", "--recipe", "fqvit-w4a8", "--calib-size", "64",
                 "--limit", "256", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    assert metrics["calib_size"] == 64 and metrics["rel_bops"] < 0.05
    assert {p.name for p in out.iterdir()} >= {"model", "metrics.json", "report.md", "bits_per_layer.png",
                                                "sqnr_per_layer.png"}
    assert "| `blocks.0.attn.qkv` | 4 | 8 |" in (out / "report.md").read_text()
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries


@ready
def test_eval_of_saved_model_matches_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["compress", "--model", "swin-fmnist", "--recipe", "w8a8", "--calib-size", "64", "--limit", "256",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--limit", "256", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == metrics["q_top1"]
