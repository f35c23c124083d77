"""GPUSQ on a detector: 2:4 sparsity of the transformer's GEMMs, the sparse PTQ that starts the quantization
stage, the backbone-feature distillation both stages train with, and ``vitcompress compress gpusq`` end to end."""

from __future__ import annotations

import pytest
import torch

from tiny_detection import tiny_detector, tiny_scenes
from vitcompress.config import get_preset
from vitcompress.quantize import restore, save
from vitcompress.sparsity import check_sparsity, sparsify_
from vitcompress.sparsity.apply import DEFAULT_LAYERS
from vitcompress.train.qat import prepare_sparse_qat_

BACKBONE_GEMMS = tuple(f"backbone.body.{p}" for p in DEFAULT_LAYERS)  # GPUSQ-ViT's layers, in the transformer


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_a_detector_backbone_takes_2_4_sparsity_then_ptq_and_keeps_it(backbone, scenes, tmp_path, one_thread):
    train, val = scenes
    model = tiny_detector(backbone)
    plan = sparsify_(model, "2:4", layers=BACKBONE_GEMMS)
    assert plan and all(n.startswith("backbone.body.") for n in plan) and set(plan.values()) == {"2:4"}
    prepare_sparse_qat_(model, get_preset("w8a8"), train, batch_size=4).eval()  # GPUSQ stage 2's start
    assert all(check_sparsity(model).values()) and set(check_sparsity(model)) == set(plan)
    save(model, tmp_path / "m")
    back = restore(tmp_path / "m")
    assert all(check_sparsity(back).values()) and set(check_sparsity(back)) == set(plan)
    images = [val[i][0] for i in range(len(val))]
    with torch.no_grad():
        for a, b in zip(model(images), back(images)):
            assert torch.equal(a["boxes"], b["boxes"]) and torch.isfinite(a["boxes"]).all()


def test_backbone_distillation_loss_is_zero_against_itself_and_trains_only_the_backbone(scenes, one_thread):
    from vitcompress.methods.gpusq.detector import BackboneDistillLoss, backbone_points
    from vitcompress.train.distill import DistillConfig

    train, _ = scenes
    teacher, student = tiny_detector("swin"), tiny_detector("swin")
    x = torch.stack([train[i][0] for i in range(2)])
    loss = BackboneDistillLoss(teacher, student, DistillConfig())
    value, logs = loss(student, x, torch.zeros(2))
    assert value.item() == 0.0 and logs["feat"] == 0.0  # same weights: every feature equal
    assert [label for label, _ in backbone_points(student)] == ["patch", "stage1", "stage2", "stage3", "stage4"]
    sparsify_(student, "2:4", layers=BACKBONE_GEMMS)
    value, _ = loss(student, x, torch.zeros(2))
    value.backward()
    assert value.item() > 0
    assert student.backbone.body.layers[0].blocks[0].attn.qkv.weight.grad is not None
    assert all(p.grad is None for p in student.roi_heads.parameters())  # the heads are not trained by it
    assert all(p.grad is None for p in teacher.parameters())
    loss.close()


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_compress_gpusq_command_on_a_detector(backbone, scenes, tmp_path, monkeypatch, capsys, one_thread):
    import json

    from tiny_detection import use_tiny_scenes
    from vitcompress.cli import main
    from vitcompress.models.detection.source import save_detector

    train, val = scenes
    use_tiny_scenes(monkeypatch, train, val)
    folder = save_detector(tiny_detector(backbone), tmp_path / "det")
    out = tmp_path / "run"
    args = ["--model", str(folder), "--steps", "2", "--batch-size", "2", "--calib-size", "4", "--out", str(out)]
    assert main(["compress", "gpusq", *args]) == 0
    assert "box mAP" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "gpusq" and "q_bbox_map" in m and "fp_top1" not in m
    assert 0 <= m["sparse_float_bbox_map"] <= 100 and 0 <= m["ptq_bbox_map"] <= 100
    assert m["prune"]["steps"] == 2 and m["qat"]["steps"] == 2
    assert m["sparse_layers"] and all(n.startswith("backbone.body.") for n in m["sparse_layers"])
    assert len(m["weight_factors"]) == (6 if backbone == "swin" else 3)  # patch, stages (1 ViT block), pyramid
    assert sum(m["weight_factors"]) == pytest.approx(1.0, abs=1e-9)
    back = restore(out / "model")  # sparse and quantized, from the folder
    assert set(check_sparsity(back)) == set(m["sparse_layers"]) and all(check_sparsity(back).values())
    assert "box mAP" in (out / "report.md").read_text()


def test_gpusq_on_a_detector_refuses_several_processes(monkeypatch):
    from vitcompress import distributed
    from vitcompress.errors import UnsupportedModelError
    from vitcompress.methods.gpusq.detector import check_one_process

    check_one_process()  # one process: nothing to say
    monkeypatch.setattr(distributed, "init_from_env", lambda: True)  # as under torchrun with 2 processes
    with pytest.raises(UnsupportedModelError, match="without torchrun"):
        check_one_process()
