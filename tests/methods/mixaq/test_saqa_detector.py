"""SAQA on a Swin detector: the backbone distillation from the float detector, one sampled ratio vector per step,
only the transformer trained, exact resume, and ``compress_``/``run_job`` with SAQA on a saved detector folder."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch

from tiny_detection import tiny_detector, tiny_scenes, use_tiny_scenes
from vitcompress.config import get_preset
from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq import saqa as saqa_module
from vitcompress.methods.mixaq.model import mixaq_, model_groups, set_ratios
from vitcompress.methods.mixaq.saqa import SAQAConfig, sampled_loss, saqa_
from vitcompress.methods.mixaq.saqa_detector import backbone_loss, body_only
from vitcompress.quant import Quantizer
from vitcompress.train.qat import qat_recipe
from vitcompress.train.trainer import STATE_FILE, TrainingInterrupted

BODY = "backbone.body."
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


def two_branch_detector(train, recipe: str = "w8a8", low_bits: int = 4):
    """(float teacher, MixA-Q detector with LSQ scales) as ``compress_`` builds them for SAQA."""
    fp = tiny_detector("swin")
    teacher = copy.deepcopy(fp).eval()
    return teacher, mixaq_(fp, train, qat_recipe(get_preset(recipe)), low_bits, batch_size=4)


@pytest.fixture(scope="module")
def w8a4(scenes):
    """The W8 A8/A4 pair, built once; tests take copies."""
    return two_branch_detector(scenes[0])


def images(data, n: int) -> torch.Tensor:
    return torch.stack([data[i][0] for i in range(n)])


@torch.no_grad()
def loss_at(teacher, model, x: torch.Tensor, ratio: float) -> float:
    """The backbone distillation loss of ``model`` (eval mode) at ``ratio`` in every group; ratio 0 restored."""
    loss = backbone_loss(teacher, model)
    set_ratios(model, [ratio] * len(model_groups(model)), upper=1.0)
    try:
        return loss(model.eval(), x, None)[0].item()
    finally:
        set_ratios(model, [0.0] * len(model_groups(model)))
        loss.close()


def test_backbone_loss_is_zero_with_quantizers_off_and_grows_with_the_low_windows(scenes, w8a4):
    train, _ = scenes
    teacher, model = copy.deepcopy(w8a4)
    x = images(train, 4)
    quantizers = [q for q in model.modules() if isinstance(q, Quantizer)]
    for q in quantizers:
        q.enabled = False  # a disabled quantizer returns its input: the student is the float detector
    assert loss_at(teacher, model, x, 0.0) == 0.0 and loss_at(teacher, model, x, 0.5) == 0.0  # exact
    for q in quantizers:
        q.enabled = True
    at0, at08 = loss_at(teacher, model, x, 0.0), loss_at(teacher, model, x, 0.8)
    assert 0.0 < at0 < at08  # W8A8 differs from float; 80 % of the windows at A4 differ more


def test_the_sampled_loss_reaches_the_transformer_and_not_the_heads(scenes, w8a4):
    train, _ = scenes
    teacher, model = copy.deepcopy(w8a4)
    distill = backbone_loss(teacher, model)
    loss_fn = sampled_loss(model, SAQAConfig(), distill)
    with body_only(model) as trained:
        torch.manual_seed(0)
        loss, logs = loss_fn(model.train(), images(train, 2), torch.zeros(2))
        loss.backward()
        assert trained and all(n.startswith(BODY) for n in trained)
    distill.close()
    assert loss.item() > 0
    assert 0.0 < logs["ratio_sum"] <= 0.8 * len(model_groups(model)) + 1e-9  # a sampled vector, within the grid
    body = model.backbone.body.layers[0].blocks[0]
    assert body.attn.qkv.weight.grad is not None and body.attn.qkv.weight.grad.abs().sum() > 0
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith(BODY) and ".low." in n)
    for part in (model.rpn, model.roi_heads, model.backbone.fpn, teacher):
        assert all(p.grad is None for p in part.parameters())
    assert all(p.requires_grad for p in model.roi_heads.parameters())  # the flags are restored


def test_saqa_steps_lower_the_backbone_loss_at_a_fixed_ratio_vector(scenes, tmp_path):
    """W4 A4/A2 (the paper's low-bit setting, where adaptation pays): 16 steps of 4 scenes at lr 1e-4 lower the
    loss at ratio 0.5 everywhere by more than 10 % on the 8 train scenes and on the 4 val scenes (measured:
    0.755 and 0.834 of the start; seeds 1 and 2 give 0.77 to 0.82). At W8/A4 the start is already near the
    floor of 8-bit rounding and 16 steps do not lower it: the test uses the setting with something to learn."""
    train, val = scenes
    teacher, model = two_branch_detector(train, "w4a4", 2)
    before = {name: loss_at(teacher, model, images(d, len(d)), 0.5) for name, d in (("train", train), ("val", val))}
    outside = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith(BODY)}
    inside = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(BODY)}
    result = saqa_(model, train, SAQAConfig(steps=16, batch_size=4, lr=1e-4, seed=0), teacher, tmp_path)
    after = {name: loss_at(teacher, model, images(d, len(d)), 0.5) for name, d in (("train", train), ("val", val))}
    assert after["train"] < 0.9 * before["train"] and after["val"] < 0.9 * before["val"], (before, after)
    assert result["steps"] == 16 and {"loss", "feat", "ratio_sum"} <= set(result["history"][-1])
    assert (tmp_path / STATE_FILE).is_file() and not model.training
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in outside.items())  # heads and pyramid: their PTQ weights
    assert sum(not torch.equal(params[n], p) for n, p in inside.items()) > len(inside) // 2
    assert all(p.requires_grad for p in model.parameters())


def test_saqa_on_a_detector_needs_the_float_teacher(scenes, w8a4):
    train, _ = scenes
    model = copy.deepcopy(w8a4[1])
    with pytest.raises(ConfigError, match="teacher"):
        saqa_(model, train, SAQAConfig(steps=1, batch_size=2))


def test_interrupted_detector_saqa_resumes_to_the_weights_of_an_uninterrupted_run(scenes, w8a4, tmp_path, monkeypatch):
    train, _ = scenes
    teacher, start = w8a4  # copied below; the teacher is only read
    config = SAQAConfig(steps=4, batch_size=2, lr=1e-4, seed=3)
    whole = copy.deepcopy(start)
    saqa_(whole, train, config, teacher, tmp_path / "whole")

    real, calls = saqa_module.set_ratios, []

    def sigterm_in_step_2(*args, **kwargs):  # set_ratios runs once per step, at its start
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer finishes step 2, saves, stops

    cut = copy.deepcopy(start)
    monkeypatch.setattr(saqa_module, "set_ratios", sigterm_in_step_2)
    with pytest.raises(TrainingInterrupted, match="SAQA stopped by SIGTERM at step 2"):
        saqa_(cut, train, config, teacher, tmp_path / "cut")
    monkeypatch.setattr(saqa_module, "set_ratios", real)
    resumed = copy.deepcopy(start)
    result = saqa_(resumed, train, config, teacher, tmp_path / "cut", resume=True)
    assert result["steps"] == 4
    a, b, c = whole.state_dict(), resumed.state_dict(), cut.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: same batches, same ratio vectors, same optimizer
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the cut run stopped halfway


def detector_job(scenes, tmp_path, monkeypatch, steps: int = 2):
    """(job of a saved tiny detector folder into ``tmp_path/run``, MixA-Q config with ``steps`` of SAQA)."""
    from vitcompress.jobs import JobConfig
    from vitcompress.methods.mixaq import MixAQConfig, MixAQSearchConfig
    from vitcompress.models.detection.source import save_detector
    from vitcompress.models.source import ModelSource

    use_tiny_scenes(monkeypatch, *scenes)
    folder = save_detector(tiny_detector("swin"), tmp_path / "det")
    config = MixAQConfig(
        eval_images=4,
        choose=0.9,
        search=MixAQSearchConfig(population=2, generations=0),
        saqa=SAQAConfig(steps=steps, batch_size=2, lr=1e-4),
    )
    return JobConfig(ModelSource(str(folder)), out=str(tmp_path / "run"), calib_size=4), config


def test_compress_mixaq_with_saqa_on_a_saved_detector_folder(scenes, tmp_path, monkeypatch):
    from vitcompress.jobs import run_job

    job, config = detector_job(scenes, tmp_path, monkeypatch)
    out = tmp_path / "run"
    result = run_job(job, config)
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "mixaq" and m["score"] == "box mAP" and m["saqa"]["steps"] == 2
    assert m["config"]["saqa"]["steps"] == 2 and (out / "saqa" / STATE_FILE).is_file()
    held = m["held_out"]
    assert all(0 <= p["top1"] <= 100 for p in [held["baseline"], *held["front"]])  # box mAP of the candidates
    assert all(0 <= p["top1"] <= 100 for p in m["test"].values()) and 0 <= m["q_bbox_map"] <= 100
    assert "### On a detector" in (out / "report.md").read_text()
    state = json.loads((out / "state.json").read_text())
    assert "|saqa " in state["fingerprint"]["tag"]  # a search after SAQA never resumes one without it
    assert isinstance(result.model.backbone.body.layers[0].blocks[0].low["mlp"].fc1.input_quantizer.scale,
                      torch.nn.Parameter)  # fmt: skip


@pytest.mark.slow  # 8 to 15 s: three jobs on the tiny detector
def test_a_job_stopped_in_saqa_resumes_to_the_model_of_an_uninterrupted_job(scenes, tmp_path, monkeypatch):
    from dataclasses import replace

    from vitcompress.jobs import run_job

    job, config = detector_job(scenes, tmp_path, monkeypatch, steps=4)
    whole = run_job(replace(job, out=str(tmp_path / "whole")), config)
    real, calls = saqa_module.set_ratios, []

    def sigterm_in_step_3(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(saqa_module, "set_ratios", sigterm_in_step_3)
    with pytest.raises(TrainingInterrupted, match="at step 3"):
        run_job(job, config)
    monkeypatch.setattr(saqa_module, "set_ratios", real)
    assert not (tmp_path / "run").exists()  # nothing committed: the search never ran on the half-trained model
    resumed = run_job(replace(job, resume=True), config)
    assert resumed.metrics["saqa"]["steps"] == 4
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["held_out"] == whole.metrics["held_out"]  # same candidates, same box mAP


def test_saqa_option_on_the_command_line():
    import argparse

    from vitcompress.cli import build_parser
    from vitcompress.methods.mixaq.cli import COMMAND
    from vitcompress.methods.mixaq.saqa import parse_saqa

    assert parse_saqa("on") == SAQAConfig()
    assert parse_saqa("steps=100, lr=1e-4,sampler=naive") == SAQAConfig(steps=100, lr=1e-4, sampler="naive")
    with pytest.raises(ConfigError, match="saqa: expected on or KEY=VALUE.*steps, batch_size"):
        parse_saqa("stepz=3")
    with pytest.raises(ConfigError, match="saqa: steps takes an integer, got 'many'"):
        parse_saqa("steps=many")
    compress = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    mixaq = next(a for a in compress["compress"]._actions if isinstance(a, argparse._SubParsersAction))
    parser = mixaq.choices["mixaq"]
    shared = {"seed": None, "calib_size": None}
    config = COMMAND.config(parser.parse_args(["--model", "det:swin", "--saqa", "steps=7,batch_size=2"]), shared)
    assert config.saqa == SAQAConfig(steps=7, batch_size=2)
    assert COMMAND.config(parser.parse_args(["--model", "det:swin"]), shared).saqa is None  # training-free
