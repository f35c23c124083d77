"""Where a detector comes from (``det:<backbone>`` names, float detector folders) and what ``@head`` means on it."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_detection import tiny_config, tiny_detector
from vitcompress.config import resolve_recipe
from vitcompress.errors import CheckpointError, ConfigError
from vitcompress.models import load_model
from vitcompress.models.detection import is_detector
from vitcompress.models.detection.source import is_detector_folder, load_detector_folder, save_detector
from vitcompress.models.source import ModelSource
from vitcompress.nn.edges import edge_modules, resolve_edges


def test_det_names_build_the_detector_their_source_describes():
    model = tiny_detector("vit", "mask_rcnn")
    source = model.vitcompress_source
    assert source["name"] == "det:vit" and source["kwargs"]["head"] == "mask_rcnn"
    again = load_model(source["name"], **json.loads(json.dumps(source["kwargs"])))  # as source.json stores it
    assert is_detector(again) and again.detector_config == tiny_config("vit", "mask_rcnn")
    assert not again.training


def test_bad_det_names_and_arguments_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"det:<backbone>.*\['swin', 'vit'\]"):
        load_model("det:resnet")
    with pytest.raises(ConfigError, match="unknown detector argument.*'depth'"):
        load_model("det:vit", depth=3)
    with pytest.raises(ConfigError, match="head"):
        load_model("det:swin", head="yolo")


def test_a_float_detector_folder_round_trips_through_model_source(tmp_path):
    model = tiny_detector("swin", "faster_rcnn")
    folder = save_detector(model, tmp_path / "det")
    assert is_detector_folder(folder) and {p.name for p in folder.iterdir()} == {
        "detector.json",
        "model.safetensors",
        "manifest.json",
    }
    back = ModelSource(str(folder)).load()
    state, again = model.state_dict(), back.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    (folder / "model.safetensors").write_bytes(b"not the saved bytes")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_detector_folder(folder)


def test_save_detector_refuses_a_classifier(tmp_path):
    from tiny_models import tiny_vit

    with pytest.raises(ConfigError, match="not a detector"):
        save_detector(tiny_vit(), tmp_path / "x")


@pytest.mark.parametrize(
    "backbone, head, heads",
    [
        ("swin", "mask_rcnn", ["backbone.fpn", "rpn", "roi_heads"]),
        ("vit", "faster_rcnn", ["backbone.up4", "backbone.up8", "backbone.levels", "rpn", "roi_heads"]),
        ("swin", "fcos", ["backbone.fpn", "head"]),
    ],
)
def test_head_edge_of_a_detector_is_everything_after_the_transformer(backbone, head, heads):
    model = tiny_detector(backbone, head)
    edges = edge_modules(model)
    assert edges["@stem"] == ["backbone.body.patch_embed.proj"] and edges["@head"] == heads
    patterns = [p for p, _ in resolve_edges(resolve_recipe("w4a4"), model).overrides]
    assert [p for p in patterns if not p.startswith("backbone.body.")] == [h + ".*" for h in heads]


def test_swin_backbone_has_no_unused_final_norm():
    body = tiny_detector("swin").backbone.body
    assert isinstance(body.norm, torch.nn.Identity)  # the pyramid takes the stages before it
