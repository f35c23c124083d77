"""MixA-Q's building blocks on a Swin detector: window scores from the backbone inside the detector."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tiny_detection import tiny_detector, tiny_scenes, use_tiny_scenes
from vitcompress.config import get_preset
from vitcompress.errors import UnsupportedModelError
from vitcompress.methods.mixaq.bops import mixed_cost
from vitcompress.methods.mixaq.model import mixaq_, mixed_blocks, model_groups, set_ratios
from vitcompress.models.source import ModelSource
from vitcompress.quantize import quantize_


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


def test_mixaq_on_a_swin_detector_equals_ptq_at_ratio_zero_and_costs_less_above(scenes, one_thread):
    train, val = scenes
    fp = tiny_detector("swin")
    ptq = quantize_(copy.deepcopy(fp), get_preset("w8a8"), train, batch_size=4)
    mixed = mixaq_(copy.deepcopy(fp), train, get_preset("w8a8"), 4, batch_size=4)
    blocks = mixed_blocks(mixed)  # the Swin's blocks, named inside it
    assert list(blocks) == [f"layers.{s}.blocks.0" for s in range(4)] and blocks["layers.0.blocks.0"].n_windows == 16
    images = [val[i][0] for i in range(len(val))]
    with torch.no_grad():
        for a, b in zip(ptq(images), mixed(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])  # ratio 0 = PTQ
    before = mixed_cost(mixed).bops
    set_ratios(mixed, [0.5] * len(model_groups(mixed)))
    assert mixed_cost(mixed).bops < before  # half the windows of every group at A4
    with torch.no_grad():
        out = mixed(images)
    assert all(torch.isfinite(o["boxes"]).all() for o in out)


def test_mixaq_refuses_a_vit_detector():
    with pytest.raises(UnsupportedModelError, match="Swin detector"):
        model_groups(tiny_detector("vit"))


def test_compress_mixaq_command_on_a_swin_detector(scenes, tmp_path, monkeypatch, capsys, one_thread):
    from vitcompress.cli import main
    from vitcompress.models.detection.source import save_detector
    from vitcompress.quantize import restore

    train, val = scenes
    use_tiny_scenes(monkeypatch, train, val)
    folder = save_detector(tiny_detector("swin"), tmp_path / "det")
    out = tmp_path / "run"
    args = ["--model", str(folder), "--calib-size", "4", "--eval-images", "4", "--population", "4"]
    assert main(["compress", "mixaq", *args, "--generations", "1", "--choose", "0.9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "box mAP" in printed and "backbone BOPs" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "mixaq" and m["score"] == "box mAP" and "q_bbox_map" in m and "fp_top1" not in m
    held = m["held_out"]
    assert all(0 <= p["top1"] <= 100 for p in [held["baseline"], *held["front"]])  # box mAP of the candidates
    d = m["detector_cost"]
    # the search's relative BOPs are the backbone's: the chosen point's rel_bops is its backbone BOPs / PTQ's
    assert d["backbone_bops"] / d["ptq_backbone_bops"] == pytest.approx(m["chosen"]["rel_bops"], rel=1e-9)
    assert d["total_bops"] == m["bops"] and d["fp_total_bops"] == m["fp_bops"]  # the whole detector, as jobs report
    assert d["total_bops"] - d["backbone_bops"] == d["ptq_total_bops"] - d["ptq_backbone_bops"]  # heads unchanged
    assert d["backbone_bops"] < d["ptq_backbone_bops"] < d["fp_backbone_bops"]
    assert d["backbone_bops_reduction_vs_ptq"] > d["total_bops_reduction_vs_ptq"] > 1.0
    assert "### On a detector" in (out / "report.md").read_text()
    restored = restore(out / "model")  # the two-branch detector at the chosen ratios, from layout.json
    images = [val[i][0] for i in range(2)]
    reloaded = ModelSource(str(out / "model")).load()
    with torch.no_grad():
        for a, b in zip(restored(images), reloaded(images)):
            assert torch.equal(a["boxes"], b["boxes"])
