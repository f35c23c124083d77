"""Every vision-transformer family quantizes: attention found by what it computes (issue 14, items 1, 2, 8).

Over the families of ``tests/families.py`` (random weights, LayerScale 0.1, small inputs): quantizers
off => bit-identical to float (``torch.equal``); every attention block quantized and no module left
float; W8A8 logits SQNR >= 20 dB to float (MobileViT: 12 dB, its BatchNorm/SiLU conv activations are
the outlier case of issue 14 item 7). The heavy families are ``slow``.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from families import FAMILIES, build, images
from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.errors import UnsupportedModelError
from vitcompress.nn.convert import attention_summary, float_modules, prepare, quantization_points, set_quantizers
from vitcompress.quantize import quantize_, restore, save
from vitcompress.report.analysis import sqnr_db

# attention blocks of each family at its tests/families.py size (timm Attention/WindowAttention or generic)
ATTENTION_BLOCKS = {
    "vit": 2,
    "deit_distilled": 2,
    "deit3": 2,
    "dinov2_reg": 2,
    "clip_vit": 2,
    "flexivit": 2,
    "swin": 4,
    "beit": 2,
    "eva02": 2,
    "swinv2": 4,
    "cait": 4,  # 2 talking-heads + 2 class-attention
    "xcit": 4,  # 2 cross-covariance + 2 class-attention
    "convit": 2,  # GPSA (the local blocks at depth 2)
    "pit": 12,
    "levit": 11,  # 9 attention + 2 attention-downsample
    "twins": 4,
    "mobilevit": 9,
    "efficientvit_mit": 4,  # LiteMLA linear attention: two matmuls, no softmax
    "efficientvit_msra": 6,  # cascaded group attention
}
FAST = ("beit", "eva02", "swinv2", "cait", "convit")  # F.linear-called qkv, cosine/talking-heads/GPSA attention
SQNR_FLOOR_DB = {"mobilevit": 12.0}
SQNR_DEFAULT_DB = 20.0


def _params(fast=FAST):
    return [f if f in fast else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]


def test_every_family_has_an_expected_attention_count():
    assert set(ATTENTION_BLOCKS) == set(FAMILIES)


@pytest.mark.parametrize("family", _params())
def test_disabled_quantizers_are_bit_identical_and_every_attention_block_is_quantized(family):
    model = build(family)
    reference = copy.deepcopy(model)
    x = images(family, 2)
    prepare(model, get_preset("w8a8"))
    assert float_modules(model) == []
    summary = attention_summary(model)
    assert summary.attention_modules == summary.quantized_attention == ATTENTION_BLOCKS[family]
    set_quantizers(model, False)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("family", _params(fast=("beit",)))
def test_w8a8_logits_stay_close_to_float(family):
    model = build(family)
    reference = copy.deepcopy(model)
    quantize_(model, get_preset("w8a8"), [images(family, 8)])
    x = images(family, 8, seed=2)  # not the calibration images
    with torch.no_grad():
        assert sqnr_db(reference(x), model(x)) >= SQNR_FLOOR_DB.get(family, SQNR_DEFAULT_DB)  # dB


def test_a_linear_called_through_f_linear_is_quantized():
    """BEiT's attention calls F.linear(x, self.qkv.weight, q/k/v bias): the converted qkv's points act."""
    model = build("beit")
    x = images("beit", 4)
    quantize_(model, get_preset("w4a8"), [x])
    attn = model.blocks[0].attn
    assert attn.qkv.input_quantizer.is_calibrated
    outputs = []
    attn.register_forward_hook(lambda m, i, o: outputs.append(o))
    with torch.no_grad():
        model(x)
        attn.qkv.weight_quantizer.enabled = False
        model(x)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4  # the 4-bit qkv weight is what ran (outputs ~1e-2)


def test_generic_point_names_and_roles():
    model = build("swinv2")
    prepare(model, get_preset("w8a8"))
    roles = {n: qz.role for n, qz in quantization_points(model)}
    attn = "layers.0.blocks.0.attn"
    assert roles[f"{attn}.matmul0.a"] == roles[f"{attn}.matmul0.b"] == roles[f"{attn}.matmul1.b"] == "qkv"
    assert roles[f"{attn}.softmax0.out"] == "probs"
    assert f"{attn}.matmul1.a" not in roles  # the softmax output: quantized once, by softmax0.out
    assert roles[f"{attn}.qkv.weight"] == "weight"  # the F.linear-called qkv keeps its own points
    model = build("beit")
    prepare(model, get_preset("w8a8"))
    roles = {n: qz.role for n, qz in quantization_points(model)}
    assert [roles[f"blocks.1.attn.sdpa0.{p}"] for p in ("q", "k", "v", "probs")] == ["qkv"] * 3 + ["probs"]


def test_fused_attention_runs_explicitly_and_matches_at_16_bit():
    model = build("eva02")
    reference = copy.deepcopy(model)
    a16 = QuantSpec(16, "asymmetric")
    recipe = Recipe(weight=QuantSpec(16, "symmetric", "channel"), act=a16, qkv=a16, probs=a16, norm=a16)
    x = images("eva02", 4)
    quantize_(model, recipe, [x])
    with torch.no_grad():
        assert sqnr_db(reference(x), model(x)) > 50.0  # dB


class _Inner(nn.Module):
    """Attention with a temperature (a parameter-free leaf module's ops would count as its parent's)."""

    def __init__(self):
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(1))

    def forward(self, q, k):
        return (q @ k.transpose(-2, -1) * self.temperature).softmax(-1) @ k


class _Outer(nn.Module):
    """Runs a softmax and a matmul of its own around an inner attention-like module."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.inner = _Inner()

    def forward(self, x):
        y = self.inner(x, self.proj(x))
        return F.softmax(y, dim=-1) @ x.transpose(-2, -1)


def test_ops_belong_to_the_module_whose_code_runs_them():
    model, x = nn.Sequential(_Outer()).eval(), torch.randn(2, 5, 8)
    reference = copy.deepcopy(model)
    prepare(model, Recipe(), example_input=x)
    names = [n for n, _ in quantization_points(model) if ".matmul" in n or ".softmax" in n]
    inner = ["0.inner.matmul0.a", "0.inner.matmul0.b", "0.inner.softmax0.out", "0.inner.matmul1.b"]
    assert names == [*inner, "0.softmax0.out", "0.matmul0.b"]  # in the order the forward runs them
    assert attention_summary(model).quantized_attention == 2
    set_quantizers(model, False)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_attention_in_the_models_own_forward_is_listed_float():
    model, x = _Outer().eval(), torch.randn(2, 5, 8)
    with pytest.raises(UnsupportedModelError, match="<model> \\(_Outer: runs attention ops in the model's own forward"):
        prepare(copy.deepcopy(model), Recipe(), example_input=x)
    prepare(model, Recipe(unknown_layers="float"), example_input=x)
    assert [(f.name, f.type) for f in float_modules(model)] == [("", "_Outer")]
    summary = attention_summary(model)
    assert (summary.attention_modules, summary.quantized_attention, summary.modules) == (2, 1, ["inner", ""])


def test_save_restore_keeps_the_generic_points(tmp_path):
    model = build("beit")
    x = images("beit", 4)
    quantize_(model, get_preset("w8a8"), [x])
    save(model, tmp_path / "q")
    restored = restore(tmp_path / "q", build("beit", seed=1))  # other random weights: all of them are loaded
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
