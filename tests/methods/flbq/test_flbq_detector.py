"""F-LBQ on detectors: units are the transformer's layers, distortion is measured on the pyramid, heads stay
uniform; through compress_ and ``vitcompress compress flbq``."""

from __future__ import annotations

import json

import pytest
from torch import nn

import vitcompress as vc
from tiny_detection import tiny_detector, tiny_scenes, use_tiny_scenes
from vitcompress.methods.flbq import FLBQConfig
from vitcompress.nn.convert import point_role, quantization_points

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


def test_flbq_allocates_the_transformer_and_keeps_pyramid_and_heads_uniform(scenes, one_thread):
    model = tiny_detector("vit")
    layers = [
        n for n, m in model.named_modules() if n.startswith("backbone.body.") and isinstance(m, nn.Linear | nn.Conv2d)
    ]
    result = vc.compress_(model, FLBQConfig(budget=4.0, n_images=8, head_bits=6), scenes[0])
    plan = result.plan
    assert sorted(plan.bits) == sorted(layers)  # patch embedding, qkv, proj, fc1, fc2: nothing after the body
    assert result.metrics["avg_bits"] == pytest.approx(4.0, abs=1e-9)  # the DP solver meets the budget exactly
    bits = {n[: -len(".weight")]: q.spec.bits for n, q in quantization_points(model) if point_role(n, q) == "weight"}
    assert all(bits[n] == b for n, b in plan.bits.items()) and len(set(plan.bits.values())) > 1  # mixed, as planned
    assert all(b == 6 for n, b in bits.items() if not n.startswith("backbone.body."))  # head_bits: pyramid, heads
    # the curves predict the pyramid distortion of the plan (sum of independent unit errors): measured within 2x
    predicted, measured = result.metrics["predicted_distortion"], result.metrics["measured_distortion"]
    assert 0.5 <= measured / predicted <= 2.0, (predicted, measured)


def test_compress_flbq_command_on_a_detector(scenes, tmp_path, monkeypatch, capsys, one_thread):
    from vitcompress.cli import main
    from vitcompress.models.detection.source import save_detector

    use_tiny_scenes(monkeypatch, *scenes)
    folder = save_detector(tiny_detector("vit"), tmp_path / "det")
    out = tmp_path / "run"
    args = ["--model", str(folder), "--budget", "4", "--n-images", "8", "--calib-size", "8", "--out", str(out)]
    assert main(["compress", "flbq", *args]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["method"] == "flbq" and "q_bbox_map" in m and m["avg_bits"] == pytest.approx(4.0, abs=1e-9)
    assert (out / "curves.json").is_file() and (out / "model" / "source.json").is_file()
