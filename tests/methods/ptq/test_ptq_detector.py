"""PTQ on detectors: the backbone at the preset's bits, the pyramid and heads at 8 bit, detections close to float;
through quantize_, save/restore, run_job and the command line."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torchvision.ops import box_iou

from tiny_detection import tiny_detector, tiny_scenes, use_tiny_scenes
from vitcompress.config import resolve_recipe
from vitcompress.nn.convert import float_modules, point_role, quantization_points
from vitcompress.quantize import quantize_, restore, save
from vitcompress.report.analysis import sqnr_db

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def quantized(scenes):
    """(float, quantized) tiny detector of (backbone, head, preset), quantized once per module: copy to change."""
    done = {}

    def get(backbone: str, head: str, preset: str) -> tuple[torch.nn.Module, torch.nn.Module]:
        if (backbone, head, preset) not in done:
            fp = tiny_detector(backbone, head)
            q = quantize_(copy.deepcopy(fp), resolve_recipe(preset), scenes[0], batch_size=4)
            done[backbone, head, preset] = fp, q
        return done[backbone, head, preset]

    return get


def _images(val) -> list[torch.Tensor]:
    return [val[i][0] for i in range(len(val))]


@pytest.mark.parametrize("head", ["faster_rcnn", pytest.param("mask_rcnn", marks=pytest.mark.slow)])
def test_quantizers_off_give_the_float_detections(head, scenes, quantized, one_thread):
    _, val = scenes
    fp, q = quantized("swin", head, "w8a8")
    q = copy.deepcopy(q)
    for _, qz in quantization_points(q):
        qz.enabled = False
    with torch.no_grad():
        want, got = fp(_images(val)), q(_images(val))
    for a, b in zip(want, got):
        assert torch.equal(a["labels"], b["labels"])
        # explicit attention matmuls vs timm's fused kernel: equal up to float rounding
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=0, atol=1e-5)
        if head == "mask_rcnn":
            torch.testing.assert_close(b["masks"], a["masks"], rtol=0, atol=1e-4)


@pytest.mark.parametrize("backbone, head", [("swin", "faster_rcnn"), ("vit", "faster_rcnn")])
def test_w8a8_features_and_boxes_stay_close_to_float(backbone, head, scenes, quantized, one_thread):
    _, val = scenes
    fp, q = quantized(backbone, head, "w8a8")
    images = _images(val)
    with torch.no_grad():
        x = torch.stack(images)
        want, got = fp.backbone(fp.transform.normalize(x)), q.backbone(q.transform.normalize(x))
        levels = {k: sqnr_db(want[k], got[k]) for k in want}
        fp_out, q_out = fp(images), q(images)
    assert min(levels.values()) >= 20.0, levels  # measured 23.6 (vit) to 27.9 (swin) dB
    best = torch.cat([box_iou(a["boxes"][:10], b["boxes"]).max(1).values for a, b in zip(fp_out, q_out)])
    # the float model's 10 best boxes per image, each against its closest W8A8 box: measured median 0.998,
    # 85-97 % above IoU 0.9
    assert best.median() >= 0.95 and (best >= 0.9).float().mean() >= 0.7, best


@pytest.mark.parametrize("backbone, head", [("vit", "faster_rcnn"), ("swin", "retinanet")])
def test_presets_quantize_the_backbone_and_keep_the_heads_at_8_bit(backbone, head, quantized, one_thread):
    _, q = quantized(backbone, head, "w4a4")
    assert float_modules(q) == []
    weights = {n: qz.spec.bits for n, qz in quantization_points(q) if point_role(n, qz) == "weight"}
    body = {n: b for n, b in weights.items() if n.startswith("backbone.body.") and "patch_embed" not in n}
    heads = {n: b for n, b in weights.items() if not n.startswith("backbone.body.")}
    assert body and set(body.values()) == {4}
    assert heads and set(heads.values()) == {8}  # pyramid, RPN, RoI heads (or the dense head)
    assert weights["backbone.body.patch_embed.proj.weight"] == 8  # @stem


def test_a_quantized_detector_saves_and_restores_exactly(scenes, quantized, tmp_path, one_thread):
    _, val = scenes
    _, q = quantized("swin", "faster_rcnn", "w8a8")
    save(q, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "source.json").read_text())["name"] == "det:swin"
    back = restore(tmp_path / "model")  # rebuilt from source.json: det:swin and its config
    with torch.no_grad():
        want, got = q(_images(val)), back(_images(val))
    for a, b in zip(want, got):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(a[k], b[k]), k


@pytest.fixture
def detector_folder(tmp_path, scenes, monkeypatch):
    """A saved float tiny detector; jobs and the eval command read the tiny scenes instead of the default ones."""
    from vitcompress.models.detection.source import save_detector

    use_tiny_scenes(monkeypatch, *scenes)
    return save_detector(tiny_detector("swin", "faster_rcnn"), tmp_path / "det")


def test_compress_ptq_and_eval_commands_take_a_detector(detector_folder, tmp_path, capsys, one_thread):
    from vitcompress.cli import main

    assert main(["eval", "--model", str(detector_folder), "--json", "--device", "cpu"]) == 0
    fp = json.loads(capsys.readouterr().out)
    assert fp["images"] == 4 and 0 <= fp["bbox_map"] <= 100 and 0 <= fp["bbox_map50"] <= 100
    out = tmp_path / "run"
    args = ["--model", str(detector_folder), "--recipe", "w8a8", "--calib-size", "8", "--out", str(out)]
    assert main(["compress", "ptq", *args]) == 0
    assert "box mAP" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["fp_bbox_map"] == pytest.approx(fp["bbox_map"], abs=1e-9)  # the job's baseline is the eval command's
    assert {"q_bbox_map", "q_bbox_map50", "q_bbox_map75"} <= set(m) and not {"fp_top1", "q_segm_map"} & set(m)
    assert m["calib_size"] == 8 and m["eval_images"] == 4
    assert {r["name"].split(".")[0] for r in m["layers"]} == {"body", "fpn"}  # the backbones compared, not heads
    assert "box mAP" in (out / "report.md").read_text()
    assert main(["eval", "--model", str(out), "--json"]) == 0  # the compressed detector, restored
    assert json.loads(capsys.readouterr().out)["bbox_map"] == pytest.approx(m["q_bbox_map"], abs=1e-9)


def test_methods_that_do_not_take_detectors_say_so_before_any_work(detector_folder, tmp_path):
    from vitcompress.errors import UnsupportedModelError
    from vitcompress.jobs import JobConfig, run_job
    from vitcompress.methods.evolq import EvolQConfig
    from vitcompress.models.source import ModelSource

    methods = r"\['ptq', 'flbq', 'mixaq', 'gpusq'\]"
    with pytest.raises(UnsupportedModelError, match=r"evolq does not take detectors yet.*" + methods):
        run_job(JobConfig(ModelSource(str(detector_folder)), out=str(tmp_path / "x")), EvolQConfig())
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
