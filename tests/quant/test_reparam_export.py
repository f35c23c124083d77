"""ONNX export of a RepQ-ViT model: runs in ONNX Runtime, 4-bit and log√2 points promoted to 8 bit and reported."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tests.families import build, images  # noqa: E402

from vitcompress.config import get_preset  # noqa: E402
from vitcompress.export import OrtModule, export_onnx, ort_session, to_export_model  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["vit", pytest.param("swin", marks=pytest.mark.slow)])
def test_repq_w4a4_exports_and_runs_in_onnx_runtime(family, tmp_path):
    x = images(family, 16)
    model = quantize_(build(family), get_preset("repq-w4a4"), list(x.split(8)))
    report = export_onnx(model, tmp_path / "q.onnx", policy="promote")
    notes = {p.note for p in report.changed_points}
    assert any(n.startswith("log_sqrt2 promoted to uniform uint8 on [0, ") for n in notes)
    assert any("4-bit range promoted to 8 bit" in n for n in notes)
    with torch.no_grad():
        graph, _ = to_export_model(model, "promote")
        want = graph(x)
    got = OrtModule(ort_session(tmp_path / "q.onnx"))(x)
    # the same QDQ graph in torch and in ONNX Runtime: integer kernels round differently (ViT: 0.017)
    assert float((got - want).norm() / want.norm()) < 5e-2
