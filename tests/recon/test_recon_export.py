"""ONNX export of a block-reconstructed model (``recon-w4a4``): runs in ONNX Runtime, its 4-bit and log√2 points
promoted to 8 bit and reported; on vit-fmnist the promoted export keeps the reconstructed model's accuracy.

Swin used to fail in ONNX Runtime 1.32: without bias correction the patch embedding's Conv is followed by a
Transpose and the per-channel (PTF) QDQ of ``patch_embed.norm``'s input; ORT's transpose optimizer moves the
Transpose below the QuantizeLinear and the QDQ fusion then builds a QLinearConv with a per-channel output zero
point, which its kernel rejects ("QLinearConv : result zero point must be a scalar"). ``ort_session`` finds that
pattern (``conv_per_channel_output_qdq``) and turns the TransposeOptimizer off for such a graph; the Swin cases
below check that it runs.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tests.recon.test_reconstruct import images, tiny_swin, tiny_vit  # noqa: E402

from vitcompress.config import Reconstruction, get_preset  # noqa: E402
from vitcompress.export import OrtModule, export_onnx, ort_session, to_export_model  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = Reconstruction(iters=20, batch_size=8)


def _rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    return float((got - ref).norm() / ref.norm())


@pytest.mark.parametrize("make", [tiny_vit, pytest.param(tiny_swin, marks=pytest.mark.slow)])
def test_recon_w4a4_exports_and_runs_in_onnx_runtime(make, tmp_path):
    x = torch.cat(images())
    model = quantize_(make(), replace(get_preset("recon-w4a4"), reconstruction=FAST), images())
    assert model.vitcompress_reconstruction["units"]  # it did reconstruct
    report = export_onnx(model, tmp_path / "q.onnx", policy="promote")
    notes = {p.note for p in report.changed_points}
    assert any(n.startswith("log_sqrt2 promoted to uniform uint8 on [0, ") for n in notes)
    assert any("4-bit range promoted to 8 bit" in n for n in notes)
    with torch.no_grad():
        reference = make()(x)  # the float model
        fake_quant = model(x)
        graph, _ = to_export_model(model, "promote")
        want = graph(x)
    got = OrtModule(ort_session(tmp_path / "q.onnx", threads=1))(x)
    # the same QDQ graph in torch and in ONNX Runtime: integer kernels round differently
    assert _rel(want, got) < 5e-2
    # against the 4-bit fake-quant model the promoted activations differ by their 4-bit rounding (ViT: 0.096), and
    # the finer 8-bit grid only brings the export closer to the float model (ViT: 0.036, fake quant 0.098)
    assert _rel(fake_quant, got) < 0.2
    assert _rel(reference, got) <= _rel(reference, fake_quant)


def _zoo_ready() -> bool:
    from vitcompress.data import DEFAULT_FMNIST_ROOT
    from vitcompress.models.zoo import ZOO

    return (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() and all(
        ZOO[n].checkpoint.is_file() for n in ZOO
    )


def _top1_fake_quant_and_ort(name: str, images: int, tmp_path) -> tuple[float, float, float]:
    """Top-1 (%) of ``recon-w4a4`` (20 steps per block, 256 calibration images) as fake quant and as the promoted
    ONNX graph in ONNX Runtime, and their agreement (%), on the first ``images`` test images."""
    from vitcompress.data import calibration_subset, load_dataset, make_loader
    from vitcompress.models import input_spec_of, load_model

    model = load_model(name)
    spec = input_spec_of(model)
    recipe = replace(get_preset("recon-w4a4"), reconstruction=Reconstruction(iters=20))
    quantize_(model, recipe, calibration_subset(load_dataset(spec, "train"), 256))
    export_onnx(model, tmp_path / "m.onnx", policy="promote")
    ort = OrtModule(ort_session(tmp_path / "m.onnx", threads=1))
    hits_fq = hits_ort = agree = 0
    with torch.no_grad():
        for x, y in make_loader(torch.utils.data.Subset(load_dataset(spec, "test"), range(images)), 250):
            fq, q8 = model(x).argmax(1), ort(x).argmax(1)
            hits_fq += int((fq == y).sum())
            hits_ort += int((q8 == y).sum())
            agree += int((fq == q8).sum())
    return 100.0 * hits_fq / images, 100.0 * hits_ort / images, 100.0 * agree / images


@pytest.mark.slow
@pytest.mark.skipif(not _zoo_ready(), reason="needs dataset-fashion-mnist and the shipped checkpoints")
@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_reference_model_recon_w4a4_onnx_keeps_its_accuracy(name, tmp_path):
    fq, q8, agree = _top1_fake_quant_and_ort(name, 1000, tmp_path)
    # promotion to 8 bit only refines the activations: the export must not lose what reconstruction gained
    # (vit-fmnist, 1,000 images: fake quant 88.90 %, ONNX Runtime 89.80 %, agreement 94.0 %)
    assert q8 >= fq - 0.5 and agree >= 90.0
