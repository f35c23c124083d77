"""GPUSQ-ViT as a method: ``compress_`` on vit-fmnist, a job folder that resumes, ``compress gpusq`` on the CLI."""

import json
import os
import signal
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset

import vitcompress.methods.gpusq.algorithm as algorithm
from vitcompress.api import compress_
from vitcompress.data.datasets import load_dataset
from vitcompress.errors import ConfigError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.methods.gpusq import GPUSQConfig, gpusq_preset
from vitcompress.methods.gpusq.cli import COMMAND, GPUSQOptions
from vitcompress.models.registry import input_spec_of, load_model
from vitcompress.models.source import ModelSource
from vitcompress.nn.linear import QuantLinear
from vitcompress.quantize import recipe_of, restore
from vitcompress.sparsity import check_sparsity, sparsity_plan
from vitcompress.train.trainer import TrainingInterrupted

pytestmark = pytest.mark.usefixtures("one_thread")


def quick(name="gpusq-int8", steps=2) -> GPUSQConfig:
    """A few steps of batch 8; 16 images measure the weight factors."""
    return replace(gpusq_preset(name, steps=steps, batch_size=8), factor_images=16)


def test_compress_runs_gpusq_on_vit_fmnist():
    model = load_model("vit-fmnist")
    spec = input_spec_of(model)
    train = load_dataset(spec, "train")
    calib, test = Subset(train, range(32)), Subset(load_dataset(spec, "test"), range(32))
    result = compress_(model, quick(), calib, train_data=Subset(train, range(64)), eval_data=test)
    assert result.method == "gpusq" and result.model is model and recipe_of(model).name == "gpusq-int8"
    assert isinstance(model.blocks[0].attn.qkv, QuantLinear) and all(check_sparsity(model).values())
    assert result.plan == sparsity_plan(model) == result.metrics["sparse_layers"]
    # the reference of the per-layer report is the sparse float model: same masks, not quantized
    assert not isinstance(result.reference.blocks[0].attn.qkv, QuantLinear)
    assert torch.equal(result.reference.blocks[0].attn.qkv.weight != 0, model.blocks[0].attn.qkv.weight != 0)
    m = result.metrics
    assert m["pattern"] == "2:4" and m["prune"]["steps"] == m["qat"]["steps"] == 2
    assert 0 <= m["sparse_float_top1"] <= 100 and 0 <= m["ptq_top1"] <= 100
    assert len(m["weight_factors"]) == 5 and sum(m["weight_factors"]) == pytest.approx(1.0)
    section = result.report(m)  # a function of the metrics: a job's full metrics add the dense and final rows
    assert "## GPUSQ-ViT stages" in section and "not evaluated" not in section and "dense float" not in section
    assert "| dense float | 91.00 |" in result.report({**m, "fp_top1": 91.0, "q_top1": 90.0})
    with pytest.raises(ConfigError, match="pass train_data"):
        compress_(load_model("vit-fmnist"), quick(), calib)


def job(out, resume=False) -> JobConfig:
    return JobConfig(source=ModelSource("vit-fmnist"), out=str(out), calib_size=32, limit=64, resume=resume)


def test_run_job_writes_the_folder(tmp_path):
    result = run_job(job(tmp_path), quick())
    for name in (
        "model/sparsity.json",
        "metrics.json",
        "report.md",
        "bits_per_layer.png",
        "sqnr_per_layer.png",
        "state/prune/trainer_state.pt",
        "state/qat/trainer_state.pt",
    ):
        assert (tmp_path / name).is_file(), name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["method"] == "gpusq" and m["recipe"] == "gpusq-int8" and m["calib_size"] == 32
    assert m["eval_images"] == 64 and m["q_top1"] == result.metrics["q_top1"]
    assert m["sparse_float_top1"] is not None and m["ptq_top1"] is not None and m["bops_reduction"] > 20
    assert len(m["layers"]) > 0 and m["config"]["quant"]["name"] == "gpusq-int8"
    assert "## GPUSQ-ViT stages" in (tmp_path / "report.md").read_text()
    restored = restore(tmp_path / "model")  # masks re-attached from sparsity.json
    assert sparsity_plan(restored) == m["sparse_layers"]
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(restored.eval()(x), result.model.eval()(x))


@pytest.mark.slow  # ~25 s: three jobs on vit-fmnist
def test_run_job_resumes_bit_identically_after_sigterm(tmp_path, monkeypatch):
    config = replace(quick(steps=3), eval_stages=False)
    full = run_job(job(tmp_path / "full"), config)
    assert full.metrics["sparse_float_top1"] is None and full.metrics["ptq_top1"] is None  # eval_stages off
    assert "not evaluated" in (tmp_path / "full" / "report.md").read_text()

    # SIGTERM in stage 2 (after its first step): the job stops, then resumes to the same model
    real = algorithm.mask_gradients_
    calls = []

    def sigterm_in_qat(model):
        real(model)
        calls.append(1)
        if len(calls) == 4:  # 3 steps of stage 1, then the first of stage 2
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(algorithm, "mask_gradients_", sigterm_in_qat)
    with pytest.raises(TrainingInterrupted, match="stage 2 .* at step 1"):
        run_job(job(tmp_path / "cut"), config)
    monkeypatch.setattr(algorithm, "mask_gradients_", real)
    resumed = run_job(job(tmp_path / "cut", resume=True), config)
    assert resumed.metrics["q_top1"] == full.metrics["q_top1"]
    assert resumed.metrics["weight_factors"] == full.metrics["weight_factors"]
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_options_build_the_preset():
    cfg = COMMAND.build(
        GPUSQOptions(
            preset="gpusq-int4", steps=5, qat_steps=2, batch_size=16, seed=3, calib_size=128, eval_stages=False
        ),
        {},
    )
    assert cfg == replace(gpusq_preset("gpusq-int4", 5, 2, 16, seed=3), calib_size=128, eval_stages=False)
    assert COMMAND.build(GPUSQOptions(), {}).calib_size == 512
    with pytest.raises(ConfigError, match="preset must be one of"):
        GPUSQOptions(preset="gpusq-int2")


@pytest.mark.slow  # ~15 s: one job on vit-fmnist
def test_cli_compress_gpusq(tmp_path, capsys):
    from vitcompress.cli import main

    out = tmp_path / "int8"
    argv = [
        "compress",
        "gpusq",
        "--model",
        "vit-fmnist",
        "--preset",
        "gpusq-int8",
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--calib-size",
        "32",
        "--limit",
        "32",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "vit-fmnist / gpusq-int8: top-1" in line and "-> sparse" in line and str(out) in line
    m = json.loads((out / "metrics.json").read_text())
    assert m["prune"]["steps"] == 2 and m["calib_size"] == 32 and m["sparse_float_top1"] is not None
    assert main([*argv, "--resume", "--json"]) == 0  # the finished state resumes to the same model
    assert json.loads(capsys.readouterr().out)["q_top1"] == m["q_top1"]
    assert main(["compress", "gpusq", "--model", "vit-fmnist", "--steps", "0", "--out", str(out)]) == 2
    assert "steps must be an integer >= 1" in capsys.readouterr().err
