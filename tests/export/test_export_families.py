"""ONNX export of every ViT family: W8A8 runs in ONNX Runtime and matches the fake-quant model; models
without a timm ``patch_embed`` export at their own or the user's input size; float modules are reported.

W8A8 here is plain min-max (per-channel symmetric 8-bit weights, per-tensor asymmetric 8-bit activations,
softmax outputs and LayerNorm inputs), calibrated on 16 smooth random images. Tolerance: logits cosine
(ORT vs fake quant) >= 0.99 and the same top-1 class on >= 6 of 8 images (observed: cosine >= 0.9996,
8/8, on the families that pass; random-weight logits of some families are tiny, so cosine, which does
not care about scale, rather than absolute differences). ORT computes the same integer codes but rounds
x/s and accumulates in its own order, so a code near a rounding boundary flips now and then.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from vitcompress.config import QuantSpec, Recipe  # noqa: E402
from vitcompress.cost import cost  # noqa: E402
from vitcompress.errors import ConfigError  # noqa: E402
from vitcompress.export import OrtModule, benchmark_deploy, export_onnx, ort_session  # noqa: E402
from vitcompress.export.onnx_export import logits_of  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from families import FAMILIES, build, images, input_shape  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
W8A8 = Recipe(name="w8a8-plain", norm=QuantSpec(8, "asymmetric"))
FAST = {"vit", "beit", "cait"}  # the export of Swin's windows: tests/export/test_export.py


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _family_params() -> list:
    params = []
    for f in FAMILIES:
        marks = [] if f in FAST else [pytest.mark.slow]
        params.append(pytest.param(f, marks=marks))
    return params


@pytest.mark.parametrize("family", _family_params())
def test_w8a8_onnx_runs_in_onnx_runtime_and_matches_fake_quant(family, tmp_path):
    model = quantize_(build(family), W8A8, [images(family, 16)])
    x = images(family, 8, seed=3)
    report = export_onnx(model, tmp_path / "m.onnx")
    assert report.precision == "int8" and report.input_shape == (2, *input_shape(family))
    assert report.float_modules == ()  # unknown_layers: error, so nothing was left in float
    with torch.no_grad():
        ref = model(x)
    got = OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)
    assert cosine(ref, got) >= 0.99
    assert (ref.argmax(1) == got.argmax(1)).sum() >= 6


# ---- input size of models without a timm patch_embed --------------------------------------------------------


def test_stale_pretrained_cfg_size_fails_naming_input_size_and_the_user_size_works(tmp_path):
    model = build("levit")  # built for 64 px
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 224, 224)}  # what timm leaves it saying
    with pytest.raises(ConfigError, match="--input-size"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="--input-size"):
        cost(model)
    assert not (tmp_path / "m.onnx").exists()
    report = export_onnx(model, tmp_path / "m.onnx", input_size=64)
    assert report.input_shape == (2, 3, 64, 64) and cost(model, input_size=64).input_shape == (3, 64, 64)
    x = images("levit", 2)
    with torch.no_grad():
        ref = model(x)
    got = OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)  # float32 graph: the same ops in another order


class TokenAttention(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.qkv = nn.Linear(c, 3 * c)

    def forward(self, t):  # (B, N, C)
        q, k, v = self.qkv(t).chunk(3, -1)
        return (q @ k.transpose(1, 2) / 4).softmax(-1) @ v


class NoPatchEmbed(nn.Module):
    """Convolution stem, tokens, attention written out, classifier; no size anywhere in the model."""

    def __init__(self):
        super().__init__()
        self.stem, self.attn, self.head = nn.Conv2d(3, 16, 4, stride=4), TokenAttention(), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.attn(self.stem(x).flatten(2).transpose(1, 2)).mean(1))


def quantized_without_size(model: nn.Module, recipe: Recipe = W8A8) -> nn.Module:
    """``model`` quantized (prepare's op discovery needs a declared size), then without any size."""
    model.pretrained_cfg = {"input_size": (3, 16, 16)}
    quantize_(model.eval(), recipe, [torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))])
    del model.pretrained_cfg
    return model


def test_model_without_size_needs_input_size_everywhere(tmp_path):
    model = quantized_without_size(NoPatchEmbed())
    for run in (
        lambda: cost(model),
        lambda: export_onnx(model, tmp_path / "m.onnx"),
        lambda: benchmark_deploy(model, batches=(1,), runtime="ort"),
    ):
        with pytest.raises(ConfigError, match=r"input_size \(--input-size\)"):
            run()
    r = benchmark_deploy(model, batches=(2,), warmup=0, repeats=1, rounds=1, runtime="ort", input_size=16)
    assert r["macs"] == cost(model, input_size=16).macs and r["agreement"]["ort"]["b2"]["top1_agree"] >= 0.5
    assert r["export"]["float_modules"] == []


def test_cli_export_takes_input_size_for_a_model_without_patch_embed(tmp_path, capsys):
    from vitcompress.cli import main

    out = tmp_path / "m.onnx"
    args = ["export", "--model", "timm:efficientvit_b0", "--num-classes", "10", "--out", str(out), "--json"]
    assert main([*args, "--input-size", "64"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["input_shape"] == [2, 3, 64, 64] and d["precision"] == "fp32" and out.is_file()


# ---- float modules in the export report ----------------------------------------------------------------------


class Rescale(nn.Module):
    """A layer with weights that no converter knows: x @ W."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.eye(n) + 0.01 * torch.randn(n, n, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        return x @ self.w


def test_export_report_lists_the_modules_left_in_float(tmp_path):
    model = NoPatchEmbed()
    model.head = nn.Sequential(Rescale(16), model.head)
    model = quantized_without_size(
        model, Recipe(name="w8a8-f", norm=QuantSpec(8, "asymmetric"), unknown_layers="float")
    )
    report = export_onnx(model, tmp_path / "m.onnx", input_size=16)
    names = [m["name"] for m in report.float_modules]
    assert "head.0" in names and all({"name", "type", "why"} == set(m) for m in report.float_modules)
    d = report.to_dict()
    assert d["float_modules"] == [dict(m) for m in report.float_modules]
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = logits_of(model(x))
    assert cosine(ref, OrtModule(ort_session(tmp_path / "m.onnx", threads=1))(x)) >= 0.99


# ---- Hugging Face modules (transformers), exported as they are -----------------------------------------------


def _hf(name: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    swin = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], image_size=32, patch_size=2, window_size=4)
    torch.manual_seed(0)
    if name == "hf_vit":
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**vit, intermediate_size=37))
    elif name == "hf_deit":
        config = transformers.DeiTConfig(**vit, intermediate_size=64)
        model = transformers.DeiTForImageClassificationWithTeacher(config)
    else:
        model = transformers.SwinForImageClassification(transformers.SwinConfig(**swin))
    return model.eval()


@pytest.mark.parametrize(
    "name",
    [
        "hf_vit",
        pytest.param("hf_deit", marks=pytest.mark.slow),
        "hf_swin",
    ],
)
def test_hugging_face_modules_export_float_and_w8a8(name, tmp_path):
    """The model returns an output object: its ``logits`` are exported. The size comes from config.image_size.
    Float32 tolerance: 1e-3 of the logit range (HF Swin's float graph differs by up to 2e-3 absolute on
    logits of range ~2.5: ONNX Runtime fuses its LayerNorm/GELU/attention differently)."""
    model = _hf(name)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = logits_of(model(x))
    assert export_onnx(model, tmp_path / "f.onnx").input_shape == (2, 3, 32, 32)
    got = OrtModule(ort_session(tmp_path / "f.onnx", threads=1))(x)
    assert float((got - ref).abs().max()) <= 1e-3 * float(ref.max() - ref.min())
    model = quantize_(model, W8A8, [torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))])
    export_onnx(model, tmp_path / "q.onnx")
    with torch.no_grad():
        ref = logits_of(model(x))
    assert cosine(ref, OrtModule(ort_session(tmp_path / "q.onnx", threads=1))(x)) >= 0.99
