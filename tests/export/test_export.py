"""ONNX export and ONNX Runtime: QDQ graph contents, numeric agreement, integer kernels, errors, CLI.

Tiny random-weight timm models (ViT and a Swin with shifted windows), calibrated on random images,
keep the default suite fast; the Fashion-MNIST accuracy check on the reference models is ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from timm.models.swin_transformer import SwinTransformer  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

from vitcompress.config import QuantSpec, Recipe, get_preset  # noqa: E402
from vitcompress.errors import ConfigError, DataError, StateError  # noqa: E402
from vitcompress.export import (  # noqa: E402
    OrtModule,
    export_onnx,
    kernel_counts,
    op_counts,
    ort_session,
    to_export_model,
)
from vitcompress.export.convert import Layout, zero_point_free  # noqa: E402
from vitcompress.export.qdq import QDQ, DequantizeWeight, QDQMove  # noqa: E402
from vitcompress.quant import make_quantizer  # noqa: E402
from vitcompress.quant.functional import fake_quant, ptf_fake_quant  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
LAYOUTS = [Layout(), Layout(zero_point_free=False), Layout(integer_transposes=False), Layout(False, False)]


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=10, embed_dim=64, depth=2, num_heads=2
    ).eval()


def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(
        img_size=32,
        patch_size=2,
        in_chans=3,
        num_classes=10,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=4,
    ).eval()


def calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 3, 32, 32, generator=g) for _ in range(2)]


def quantized(build, recipe) -> torch.nn.Module:
    return quantize_(build(), recipe, calib())


def inputs(n: int = 8) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def rel_err(ref: torch.Tensor, got: torch.Tensor) -> float:
    """max |diff| relative to the reference's logit range."""
    return float((ref - got).abs().max() / (ref.max() - ref.min()))


# ---- primitives ------------------------------------------------------------------------------------
def test_qdq_forward_equals_fake_quant_exactly():
    x = torch.randn(4, 7, 16) * 3
    q = QDQ(torch.tensor(0.05), torch.tensor(131.0), signed=False)
    assert torch.equal(q(x), fake_quant(x, torch.tensor(0.05), torch.tensor(131.0), 0, 255))
    scale, zero = torch.rand(16) * 0.1 + 0.01, torch.full((16,), 7.0)
    qc = QDQ(scale, zero, signed=False, axis=-1)
    assert torch.equal(qc(x), fake_quant(x, scale, zero, 0, 255))


def test_qdq_folded_factor_scales_the_dequantized_values():
    x = torch.randn(3, 5, 8)
    plain = QDQ(torch.tensor(0.02), torch.tensor(128.0), signed=False)
    folded = QDQ(torch.tensor(0.02), torch.tensor(128.0), signed=False, factor=0.125)
    assert torch.allclose(folded(x), plain(x) * 0.125, rtol=1e-6, atol=0)  # same codes, scale 0.02·0.125


def test_dequantize_weight_equals_weight_quantizer_exactly():
    w = torch.randn(12, 20)
    for bits in (8, 4):
        qz = make_quantizer(QuantSpec(bits, "symmetric", "channel"), "w", 0, 12)
        qz.observe(w)
        qz.compute_qparams()
        from vitcompress.export.convert import weight_codes

        codes, scale, zero = weight_codes(qz, w)
        assert codes.abs().max() <= 2 ** (bits - 1)  # on the b-bit grid, hence exact in int8
        dq = DequantizeWeight(codes.to(torch.int8), scale, axis=0)
        assert torch.equal(dq(), qz(w))


def test_asymmetric_weights_export_exactly(tmp_path):
    recipe = Recipe(weight=QuantSpec(8, "asymmetric", "channel"))
    model = quantized(tiny_vit, recipe)
    export_copy, points = to_export_model(model)
    fc = model.blocks[0].mlp.fc2
    w_dq = export_copy.blocks[0].mlp.fc2.weight_dq()
    assert torch.allclose(w_dq.t(), fc.quantized_weight(), rtol=0, atol=1e-7)  # codes and zero point shifted by 128
    export_onnx(model, tmp_path / "m.onnx")
    x = inputs(4)
    with torch.no_grad():
        assert rel_err(model(x), OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)) < 0.03


def test_ptf_exports_as_exact_per_channel_qdq():
    from vitcompress.export.convert import _Points, activation_qdq

    qz = make_quantizer(QuantSpec(8, "ptf"), "norm.input", -1, 16)
    x = torch.randn(64, 16) * torch.linspace(0.1, 8, 16)
    qz.observe(x)
    qz.compute_qparams()
    points = _Points()
    qdq = activation_qdq(qz, "promote", points)
    ref = ptf_fake_quant(x, qz.scale, qz.zero_point, qz.alpha, 0, 255)
    assert torch.allclose(qdq(x), ref, rtol=0, atol=1e-6)  # same grid; scale s·2^α computed once vs per call
    assert points[0].exact and points[0].exported_as == "uint8"


# ---- the layout: where the export puts its ops keeps the numbers -----------------------------------
def test_zero_point_free_qdq_is_the_same_grid_shifted_by_its_offset():
    x = torch.randn(4, 7, 16) * 3
    plain = QDQ(torch.tensor(0.05), torch.tensor(131.0), signed=False, factor=0.125)
    for signed in (False, True):  # uint8 codes as they are; int8 codes = uint8 codes − 128
        free = zero_point_free(plain, signed)
        assert free.dq_zero_point is not None and (free.qmin < 0) == signed
        assert torch.allclose(free(x) - free.offset, plain(x), rtol=0, atol=1e-6)
    centred = QDQ(torch.tensor(0.05), torch.tensor(128.0), signed=False)
    assert zero_point_free(centred, True).dq_zero_point is None  # z = 128 is the symmetric int8 grid: no offset


def test_layout_for_runtime():
    assert Layout.for_runtime("all") == Layout.for_runtime("openvino") == Layout()
    assert Layout.for_runtime("ort") == Layout(zero_point_free=False)
    with pytest.raises(ConfigError, match=r"runtime must be one of \['ort', 'openvino', 'all'\], got 'tvm'"):
        Layout.for_runtime("tvm")


def test_qdq_move_transposes_the_codes():
    x = torch.randn(2, 5, 3, 4)
    q = QDQ(torch.tensor(0.05), torch.tensor(100.0), signed=False)
    moved = QDQMove(q, (0, 2, 1, 3), merge_last=True)
    assert torch.equal(moved(x), q(x).permute(0, 2, 1, 3).reshape(2, 3, 20))


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_every_layout_computes_the_fake_quant_model(build, tmp_path):
    model = quantized(build, get_preset("w8a8"))
    x = inputs()
    with torch.no_grad():
        ref = model(x)
        for layout in LAYOUTS:  # float reordering only: the same codes everywhere
            assert rel_err(ref, to_export_model(model, layout=layout)[0](x)) < 0.02, layout
    export_onnx(model, tmp_path / "m.onnx")
    assert rel_err(ref, OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)) < 0.03


# ---- the export copy and the ONNX graph -------------------------------------------------------------
@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_int8_onnx_agrees_with_fake_quant(build, tmp_path):
    model = quantized(build, get_preset("w8a8"))
    x = inputs()
    export_copy, points = to_export_model(model)
    assert all(p.exact for p in points)  # w8a8: every point has an exact 8-bit ONNX equivalent
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.precision == "int8" and len(report.points) == len(points)
    ops = op_counts(tmp_path / "m.onnx")
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in build().modules())
    assert ops["DequantizeLinear"] >= ops["QuantizeLinear"] >= n_linear  # every linear input is a QDQ pair
    ort = OrtModule(ort_session(tmp_path / "m.onnx", threads=1))
    with torch.no_grad():
        ref, copy_out = model(x), export_copy(x)
    got = ort(x)
    # the export copy reorders float ops only (q·scale after the matmul, x @ Wᵀ): rare one-code flips
    assert rel_err(ref, copy_out) < 0.02
    assert rel_err(ref, got) < 0.03  # ORT: integer accumulation, its own rounding of x/s
    assert (ref.argmax(1) == got.argmax(1)).float().mean() >= 0.875


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_ort_runs_integer_kernels_for_every_matmul(build, tmp_path):
    model = quantized(build, get_preset("w8a8"))
    export_onnx(model, tmp_path / "m.onnx")
    k = kernel_counts(tmp_path / "m.onnx")
    blocks = sum(1 for n, _ in model.named_modules() if n.endswith(".attn"))
    linears_in_blocks = 4 * blocks  # qkv, proj, fc1, fc2
    # each block: 4 linears + q·kᵀ + attn·v as MatMulIntegerToFloat / QLinearMatMul
    assert k["integer"] >= linears_in_blocks + 2 * blocks
    assert k["ops"].get("MatMul", 0) == 0 and k["ops"].get("Gemm", 0) == 0  # head and patch merging included
    # what stays float: the ViT patch embedding (its output is not quantized, so no QLinearConv)
    assert k["float_compute_ops"] == ({"Conv": 1} if build is tiny_vit else {})


def test_fp32_export_matches_torch_and_batch_is_dynamic(tmp_path):
    model = tiny_swin()
    report = export_onnx(model, tmp_path / "f.onnx")
    assert report.precision == "fp32" and report.points == ()
    ort = OrtModule(ort_session(tmp_path / "f.onnx", threads=1))
    for n in (1, 3):
        x = inputs(n)
        with torch.no_grad():
            assert torch.allclose(ort(x), model(x), rtol=1e-4, atol=1e-4)
    assert "QuantizeLinear" not in op_counts(tmp_path / "f.onnx")


def test_fp32_export_of_a_quantized_model_is_the_float_model(tmp_path):
    float_model = tiny_vit()
    model = quantized(tiny_vit, get_preset("w8a8"))
    export_onnx(model, tmp_path / "f.onnx", precision="fp32")
    x = inputs(4)
    with torch.no_grad():
        assert torch.allclose(
            OrtModule(ort_session(tmp_path / "f.onnx", threads=1))(x), float_model(x), rtol=1e-4, atol=1e-4
        )


def test_bias_correction_exports_as_scale_and_rank_one_offset():
    model = quantized(tiny_vit, get_preset("fqvit"))  # bias correction on; log2 probs, PTF norms
    export_copy, points = to_export_model(model, policy="float")  # log2 kept float: the rest must be exact
    assert {p.name for p in points if not p.exact} == {f"blocks.{i}.attn.probs" for i in range(2)}
    fc = model.blocks[0].mlp.fc1
    efc = export_copy.blocks[0].mlp.fc1
    x = fc.input_quantizer(torch.randn(2, 5, fc.in_features))
    with torch.no_grad():
        ref = torch.nn.functional.linear(x, fc.quantized_weight(), fc.bias)
        assert torch.allclose(efc(x), ref, rtol=0, atol=1e-5)


def test_low_bit_points_are_promoted_and_reported_or_refused(tmp_path):
    model = quantized(tiny_vit, get_preset("fqvit-w4a4"))
    report = export_onnx(model, tmp_path / "q.onnx", policy="promote")
    notes = {p.note for p in report.changed_points}
    assert "log2 promoted to uniform uint8 on [0, 1]" in notes
    assert any("4-bit range promoted to 8 bit" in n for n in notes)
    w = [p for p in report.points if p.name == "blocks.0.mlp.fc1.weight"][0]
    assert w.exact and w.exported_as == "int8"  # 4-bit weight codes fit int8 exactly
    with pytest.raises(ConfigError, match=r"4-bit activations.*policy must be one of \['promote', 'float', 'error'\]"):
        export_onnx(model, tmp_path / "e.onnx", policy="error")
    assert not (tmp_path / "e.onnx").exists()
    report = export_onnx(model, tmp_path / "f.onnx", policy="float")
    assert all(p.exported_as == "float" for p in report.changed_points)


# ---- errors -----------------------------------------------------------------------------------------
def test_bad_input_errors_name_the_field(tmp_path):
    with pytest.raises(StateError, match="precision 'int8' needs a quantized model"):
        export_onnx(tiny_vit(), tmp_path / "m.onnx", precision="int8")
    with pytest.raises(ConfigError, match=r"opset must be one of \[13, .*20\], got 9"):
        export_onnx(tiny_vit(), tmp_path / "m.onnx", opset=9)
    with pytest.raises(ConfigError, match="precision must be one of"):
        export_onnx(tiny_vit(), tmp_path / "m.onnx", precision="int4")
    with pytest.raises(DataError, match="out: output folder .*missing does not exist"):
        export_onnx(tiny_vit(), tmp_path / "missing" / "m.onnx")
    with pytest.raises(ConfigError, match="opt_level must be one of"):
        ort_session(tmp_path / "m.onnx", opt_level="max")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_partial_file(tmp_path, monkeypatch):
    def broken_export(model, args, f, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a model")
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken_export)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_onnx(tiny_vit(), tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_uncalibrated_model_is_refused(tmp_path):
    from vitcompress.nn.convert import prepare

    model = prepare(tiny_vit(), Recipe())
    with pytest.raises(StateError, match="not calibrated"):
        export_onnx(model, tmp_path / "m.onnx", precision="int8")


# ---- CLI --------------------------------------------------------------------------------------------
def test_cli_export_and_bench(tmp_path, capsys):
    from vitcompress.cli import main

    out = tmp_path / "m.onnx"
    assert (
        main(
            [
                "export",
                "--model",
                "timm:vit_tiny_patch16_224",
                "--img-size",
                "32",
                "--num-classes",
                "10",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    d = json.loads(capsys.readouterr().out)
    assert d["precision"] == "fp32" and out.is_file()
    assert main(["export", "--model", "vit-fmnist", "--out", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "out: output folder" in capsys.readouterr().err
    assert main(["export", "--model", "vit-fmnist", "--precision", "int8", "--out", str(out)]) == 2
    assert "needs a quantized model" in capsys.readouterr().err


def test_cli_export_to_an_existing_folder_fails_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    from vitcompress.cli import main
    from vitcompress.models.source import ModelSource

    def no_load(self):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(ModelSource, "load", no_load)
    assert main(["export", "--model", "vit-fmnist", "--recipe", "w8a8", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"out: {tmp_path} is a folder; give the .onnx file to write" in err
    with pytest.raises(DataError, match="is a folder"):
        export_onnx(tiny_vit(), tmp_path)


def test_bench_reports_three_engines_and_bops(tmp_path):
    from vitcompress.export import benchmark_deploy, format_bench

    r = benchmark_deploy(
        quantized(tiny_vit, get_preset("w8a8")), batches=(2,), threads=1, warmup=1, repeats=3, rounds=1, runtime="ort"
    )
    assert {t["engine"] for t in r["timings"]} == {"torch-fp32", "ort-fp32", "ort-int8"}
    for t in r["timings"]:
        assert t["runs"] == 3 and t["min_s"] <= t["median_s"] <= t["p90_s"] <= t["max_s"]
    assert r["bops_ratio"] == pytest.approx(16.0)  # every operand at 8 bit: 32·32 / (8·8)
    assert "int8_vs_ort_fp32_b2" in r["speedups"] and r["kernels"]["integer"] >= 8
    assert set(r["speedup"]) == {"ort"} and set(r["speedup"]["ort"]) == {"2"}
    assert r["speedup_vs_best_fp32"]["2"] == pytest.approx(
        min(r["medians_ms"]["torch"]["2"]["fp32"], r["medians_ms"]["ort"]["2"]["fp32"])
        / r["medians_ms"]["ort"]["2"]["int8"]
    )
    assert r["speedup_vs_bf16"] == {}  # no OpenVINO run
    assert "predicted by BOPs" in format_bench(r)


def test_speedup_tables_take_the_fastest_runs():
    from vitcompress.export.bench import speedup_tables, summarize

    ms = {"torch-fp32": 900, "ort-fp32": 400, "ort-int8": 160, "openvino-fp32": 300, "openvino-bf16": 150}
    ms["openvino-int8"] = 100
    timings = [summarize(engine, 8, [t / 1e3]) for engine, t in ms.items()]
    r = speedup_tables(timings)
    assert r["speedup"] == {"ort": {"8": pytest.approx(2.5)}, "openvino": {"8": pytest.approx(3.0)}}
    assert r["speedup_vs_best_fp32"] == {"8": pytest.approx(3.0)}  # fastest INT8 100 ms over fastest f32 300 ms
    assert r["speedup_vs_bf16"] == {"8": pytest.approx(1.5)}
    assert r["medians_ms"]["openvino"]["8"] == {"fp32": 300, "bf16": 150, "int8": 100}


def test_bench_runtime_names_are_checked():
    from vitcompress.export.bench import resolve_runtimes

    assert resolve_runtimes("ort") == ("ort",)
    with pytest.raises(ConfigError, match=r"runtime must be one of \['ort', 'openvino', 'all'\], got 'trt'"):
        resolve_runtimes("trt")


# ---- reference models on Fashion-MNIST; 224×224 timm models ---------------------------------------
def _zoo_ready() -> bool:
    from vitcompress.data import DEFAULT_FMNIST_ROOT
    from vitcompress.models.zoo import ZOO

    return (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() and all(
        ZOO[n].checkpoint.is_file() for n in ZOO
    )


zoo_ready = pytest.mark.skipif(not _zoo_ready(), reason="needs dataset-fashion-mnist and the shipped checkpoints")


def _int8_vs_fakequant_top1(name: str, images: int, tmp_path) -> tuple[float, float, float]:
    from vitcompress.data import calibration_subset, load_dataset, make_loader
    from vitcompress.models import input_spec_of, load_model

    model = load_model(name)
    spec = input_spec_of(model)
    quantize_(model, get_preset("w8a8"), calibration_subset(load_dataset(spec, "train"), 128))
    export_onnx(model, tmp_path / "m.onnx")
    ort = OrtModule(ort_session(tmp_path / "m.onnx", threads=1))
    data = torch.utils.data.Subset(load_dataset(spec, "test"), range(images))
    hits_fq = hits_ort = agree = 0
    with torch.no_grad():
        for x, y in make_loader(data, 250):
            fq, q8 = model(x).argmax(1), ort(x).argmax(1)
            hits_fq, hits_ort, agree = (
                hits_fq + int((fq == y).sum()),
                hits_ort + int((q8 == y).sum()),
                agree + int((fq == q8).sum()),
            )
    return 100.0 * hits_fq / images, 100.0 * hits_ort / images, 100.0 * agree / images


@zoo_ready
def test_vit_fmnist_int8_onnx_top1_within_0p3_of_fake_quant(tmp_path):
    fq, q8, agree = _int8_vs_fakequant_top1("vit-fmnist", 500, tmp_path)
    assert abs(q8 - fq) <= 0.3 and agree >= 99.0  # percent; full test set: docs/deploy.md


@zoo_ready
@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_reference_models_int8_onnx_top1_within_0p3_of_fake_quant_2000_images(name, tmp_path):
    fq, q8, agree = _int8_vs_fakequant_top1(name, 2000, tmp_path)
    assert abs(q8 - fq) <= 0.3 and agree >= 99.0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_224_timm_models_export_and_run_integer(arch, tmp_path):
    from vitcompress.models import load_model

    model = load_model(f"timm:{arch}", num_classes=10)
    g = torch.Generator().manual_seed(0)
    quantize_(model, get_preset("w8a8"), [torch.randn(4, 3, 224, 224, generator=g)])
    export_onnx(model, tmp_path / "m.onnx")
    k = kernel_counts(tmp_path / "m.onnx")
    blocks = sum(1 for n, _ in model.named_modules() if n.endswith(".attn"))
    assert k["integer"] >= 6 * blocks and k["ops"].get("MatMul", 0) == 0
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = model(x)
    assert rel_err(ref, OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)) < 0.1
