"""OpenVINO next to ONNX Runtime: integer precision of every matmul in both runtimes (OpenVINO's
runtime model, ORT's optimized graph), agreement with the fake-quant model, the benchmark's runtimes
and JSON, the CLI's ``--runtime``. Skipped without ``openvino``; the export layout's own tests are in
``test_export.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_export import _zoo_ready, inputs, quantized, rel_err, tiny_swin, tiny_vit  # noqa: E402

from vitcompress.config import get_preset  # noqa: E402
from vitcompress.export import OrtModule, export_onnx, kernel_counts, ort_session, to_export_model  # noqa: E402
from vitcompress.export.convert import Layout  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
zoo_ready = pytest.mark.skipif(not _zoo_ready(), reason="needs dataset-fashion-mnist and the shipped checkpoints")


ov = pytest.importorskip("openvino")

from vitcompress.export.openvino import (  # noqa: E402
    OvModule,
    ov_compile,
    ov_matmul_precisions,
    ov_node_precisions,
    ov_profile_ops,
)


def _integer_everywhere(model, path) -> None:
    """Every linear layer and both attention matmuls of every block on integer kernels, in OpenVINO's
    runtime model and in ONNX Runtime's optimized graph."""
    blocks = sum(1 for n, _ in model.named_modules() if n.endswith(".attn"))
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    precisions = ov_matmul_precisions(path)
    attention = [n for n in precisions if "/attn/MatMul" in n]
    assert len(attention) == 2 * blocks  # q·kᵀ and attn·v
    assert set(precisions.values()) <= {"u8", "i8"}, {n: p for n, p in precisions.items() if p not in ("u8", "i8")}
    nodes = ov_node_precisions(path)
    assert nodes["float_compute"] == 0 and nodes["integer"] >= linears + 2 * blocks
    k = kernel_counts(path)
    assert k["ops"].get("MatMul", 0) == 0 and k["ops"].get("Gemm", 0) == 0
    assert k["integer"] >= linears + 2 * blocks  # the qkv linear runs as three


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_both_runtimes_run_every_matmul_on_integer_kernels(build, tmp_path):
    model = quantized(build, get_preset("w8a8"))
    export_onnx(model, tmp_path / "m.onnx")
    _integer_everywhere(model, tmp_path / "m.onnx")


def test_without_zero_point_free_operands_openvino_runs_attention_in_float(tmp_path):
    """Why the layout exists: asymmetric q/k/v with zero points keep OpenVINO's attention matmuls float."""
    model = quantized(tiny_vit, get_preset("w8a8"))
    export_onnx(model, tmp_path / "m.onnx", layout=Layout(zero_point_free=False, integer_transposes=False))
    precisions = ov_matmul_precisions(tmp_path / "m.onnx")
    assert any(p not in ("u8", "i8") for n, p in precisions.items() if "/attn/MatMul" in n)


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin], ids=["vit", "swin"])
def test_openvino_int8_agrees_with_fake_quant_and_fp32_with_torch(build, tmp_path):
    model = quantized(build, get_preset("w8a8"))
    export_onnx(model, tmp_path / "q.onnx")
    export_onnx(model, tmp_path / "f.onnx", precision="fp32")
    x = inputs()
    int8 = OvModule(ov_compile(tmp_path / "q.onnx", threads=1, precision="f32"))
    fp32 = OvModule(ov_compile(tmp_path / "f.onnx", threads=1, precision="f32"))
    with torch.no_grad():
        ref = model(x)
        float_ref = to_export_model(model)[0]  # the export copy: same numbers as the fake-quant model
        assert rel_err(ref, float_ref(x)) < 0.02
    got = int8(x)
    assert rel_err(ref, got) < 0.03 and (ref.argmax(1) == got.argmax(1)).float().mean() >= 0.875
    from vitcompress.export.onnx_export import _float_copy

    with torch.no_grad():
        assert torch.allclose(fp32(x), _float_copy(model)(x), rtol=1e-4, atol=1e-4)
    assert int8(inputs(3)).shape == (3, 10)  # the batch axis stays dynamic


def test_openvino_profile_and_errors(tmp_path):
    from vitcompress.errors import ConfigError, DataError

    model = quantized(tiny_vit, get_preset("w8a8"))
    export_onnx(model, tmp_path / "q.onnx")
    prof = ov_profile_ops(tmp_path / "q.onnx", inputs(2), threads=1, runs=1)
    assert any(k.startswith("FullyConnected (int8)") for k in prof) and all(v >= 0 for v in prof.values())
    with pytest.raises(ConfigError, match=r"precision must be one of \['f32', 'bf16', 'default'\], got 'fp8'"):
        ov_compile(tmp_path / "q.onnx", precision="fp8")
    with pytest.raises(DataError, match="does not exist"):
        ov_compile(tmp_path / "missing.onnx")


def test_bench_times_every_runtime_and_reports_the_ratios():
    from vitcompress.export import benchmark_deploy, format_bench
    from vitcompress.export.openvino import has_bf16

    r = benchmark_deploy(quantized(tiny_vit, get_preset("w8a8")), batches=(1, 2), warmup=0, repeats=1, rounds=1)
    engines = {"torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-int8"}
    assert {t["engine"] for t in r["timings"]} == engines | ({"openvino-bf16"} if has_bf16() else set())
    assert r["runtimes"] == ["ort", "openvino"]
    assert set(r["speedup"]) == {"ort", "openvino"} and set(r["speedup"]["openvino"]) == {"1", "2"}
    assert set(r["speedup_vs_best_fp32"]) == {"1", "2"}
    assert set(r["speedup_vs_bf16"]) == ({"1", "2"} if has_bf16() else set())
    assert r["openvino_nodes"]["float_compute"] == 0
    assert r["agreement"]["openvino"]["b2"]["top1_agree"] >= 0.5
    assert "fastest INT8 over the fastest f32 run" in format_bench(r)


# ---- the reference ViT: integer everywhere, accuracy on a subset -------------------------------------
def _zoo_model(name: str, calib_images: int = 128):
    from vitcompress.data import calibration_subset, load_dataset
    from vitcompress.models import input_spec_of, load_model
    from vitcompress.quantize import quantize_

    model = load_model(name)
    spec = input_spec_of(model)
    quantize_(model, get_preset("w8a8"), calibration_subset(load_dataset(spec, "train"), calib_images))
    return model, spec


@pytest.fixture(scope="module")
def zoo_vit(tmp_path_factory):
    """vit-fmnist quantized with w8a8 (128 calibration images) and its INT8 ONNX file."""
    model, spec = _zoo_model("vit-fmnist")
    path = tmp_path_factory.mktemp("zoo") / "vit-int8.onnx"
    export_onnx(model, path)
    return model, spec, path


@zoo_ready
def test_zoo_vit_w8a8_runs_every_matmul_integer_in_both_runtimes(zoo_vit):
    model, _, path = zoo_vit
    _integer_everywhere(model, path)


def _top1(model, spec, path, images: int) -> dict[str, float]:
    from vitcompress.data import load_dataset, make_loader

    engines = {
        "ort": OrtModule(ort_session(path, threads=1)),
        "openvino": OvModule(ov_compile(path, threads=1, precision="f32")),
    }
    hits = dict.fromkeys(["fakequant", *engines], 0)
    agree = dict.fromkeys(engines, 0)
    data = torch.utils.data.Subset(load_dataset(spec, "test"), range(images))
    with torch.no_grad():
        for x, y in make_loader(data, 250):
            fq = model(x).argmax(1)
            hits["fakequant"] += int((fq == y).sum())
            for rt, engine in engines.items():
                got = engine(x).argmax(1)
                hits[rt] += int((got == y).sum())
                agree[rt] += int((got == fq).sum())
    out = {k: 100.0 * v / images for k, v in hits.items()}
    out.update({f"{rt}_agree": 100.0 * v / images for rt, v in agree.items()})
    return out


@zoo_ready
def test_zoo_vit_int8_top1_within_0p3_of_fake_quant_in_both_runtimes_1000_images(zoo_vit):
    # measured with the w8a8 preset's class/border tokens on their own scales (per-token QDQ): ORT agrees with
    # fake quant on 100.0 % of the images, OpenVINO on 99.8 % (top-1 91.6 / 91.6 / 91.8); 3 images of slack
    r = _top1(*zoo_vit, 1000)
    for rt in ("ort", "openvino"):
        assert abs(r[rt] - r["fakequant"]) <= 0.3 + 1e-9 and r[f"{rt}_agree"] >= 99.5, r  # all 10,000: docs/deploy.md


@zoo_ready
@pytest.mark.slow
def test_zoo_swin_int8_top1_within_0p1_of_fake_quant_in_both_runtimes_2000_images(tmp_path):
    model, spec = _zoo_model("swin-fmnist")
    export_onnx(model, tmp_path / "m.onnx")
    r = _top1(model, spec, tmp_path / "m.onnx", 2000)
    for rt in ("ort", "openvino"):
        assert abs(r[rt] - r["fakequant"]) <= 0.1 + 1e-9 and r[f"{rt}_agree"] >= 99.0, r


@zoo_ready
def test_cli_bench_runtime_all_prints_one_json_object(capsys):
    from vitcompress.cli import main

    argv = ["bench", "--model", "vit-fmnist", "--calib-size", "16", "--runtime", "all", "--batch", "8"]
    assert main([*argv, "--warmup", "0", "--repeats", "1", "--rounds", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)  # one object, nothing else on stdout
    assert set(r["speedup"]) == {"ort", "openvino"} and all(set(v) == {"8"} for v in r["speedup"].values())
    assert set(r["speedup_vs_best_fp32"]) == {"8"} and isinstance(r["speedup_vs_bf16"], dict)
    assert r["bops_ratio"] == pytest.approx(16.0)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_224_timm_models_run_every_matmul_integer_in_both_runtimes(arch, tmp_path):
    from vitcompress.models import load_model
    from vitcompress.quantize import quantize_

    model = load_model(f"timm:{arch}", num_classes=10)
    g = torch.Generator().manual_seed(0)
    quantize_(model, get_preset("w8a8"), [torch.randn(4, 3, 224, 224, generator=g)])
    export_onnx(model, tmp_path / "m.onnx")
    _integer_everywhere(model, tmp_path / "m.onnx")
    x = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        ref = model(x)
    assert rel_err(ref, OvModule(ov_compile(tmp_path / "m.onnx", threads=1))(x)) < 0.1
