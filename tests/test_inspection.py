"""``inspect_model`` / ``vitcompress inspect``: what a recipe will quantize, before any data."""

import json

import pytest
import torch
from torch import nn

from families import build
from tiny_models import tiny_vit
from vitcompress.cli import main
from vitcompress.config import PLAIN_MIN_BITS, QuantSpec, Recipe, get_preset
from vitcompress.cost import cost
from vitcompress.inspection import format_inspection, inspect_model
from vitcompress.quant import Quantizer


def test_inspect_lists_points_roles_bits_and_leaves_the_model_float():
    model = tiny_vit()
    found = inspect_model(model, get_preset("w4a4"))
    assert not any(isinstance(m, Quantizer) for m in model.modules())  # the user's model is untouched
    points = {p.name: p for p in found.points}
    assert points["blocks.0.attn.qkv.weight"].role == "weight" and points["blocks.0.attn.qkv.weight"].bits == 4
    assert points["blocks.1.attn.qkv.input"].bits == 4 and points["blocks.1.attn.q"].bits == 4
    # plain presets below 6 bit keep the softmax output and the LayerNorm inputs at 8 bit
    assert points["blocks.1.attn.probs"].role == "probs" and points["blocks.1.attn.probs"].bits == PLAIN_MIN_BITS
    assert points["blocks.0.norm1.input"].role == "norm"
    # the presets keep the model's own stem and classifier at 8 bit
    assert points["patch_embed.proj.weight"].bits == 8 and points["head.weight"].bits == 8
    assert (found.attention_modules, found.quantized_attention) == (2, 2)
    assert found.float_modules == () and found.error is None
    assert found.macs == cost(tiny_vit()).macs
    assert 0 < found.rel_bops < 1
    assert "2 of 2 blocks" in format_inspection(found)


def test_weight_only_recipe_quantizes_no_attention():
    off = QuantSpec(32)
    found = inspect_model(tiny_vit(), Recipe(name="weights-only", act=off, qkv=off, probs=off, norm=off))
    assert (found.attention_modules, found.quantized_attention) == (2, 0)
    assert {p.role for p in found.points if p.bits < 32} == {"weight"}


class _Proj(nn.Module):
    """A module multiplying by its own weight matrix, which no converter knows."""

    def __init__(self, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(n))

    def forward(self, x):
        return x @ self.weight


def test_unknown_module_is_listed_and_the_error_named_before_any_data():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(), _Proj(8 * 16), nn.Linear(8 * 16, 10))
    found = inspect_model(model, get_preset("w8a8"), input_size=16)
    assert [f["name"] for f in found.float_modules] == ["2"]
    assert found.float_modules[0]["type"] == "_Proj"
    assert found.error is not None and "2 (_Proj" in found.error
    # conv: 4x4 positions × 8 × 3 × 4 × 4; the float matmul: 128 × 128; linear: 128 × 10
    assert found.macs == 16 * 8 * 3 * 16 + 128 * 128 + 128 * 10


@pytest.mark.parametrize("family", ["levit", "efficientvit_msra"])
def test_inspect_models_without_patch_embed(family):
    found = inspect_model(build(family), get_preset("w8a8"), input_size=64)
    assert found.input_size == 64 and found.macs > 0
    assert found.attention_modules > 0


def test_cli_inspect_json(capsys):
    assert main(["inspect", "--model", "vit-fmnist", "--recipe", "w4a4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "vit-fmnist" and out["recipe"] == "w4a4"
    assert {"points", "float_modules", "attention_modules", "quantized_attention", "macs"} <= set(out)
    assert out["attention_modules"] == out["quantized_attention"] > 0
    assert {"name", "role", "bits"} <= set(out["points"][0])


def test_cli_inspect_bad_recipe_is_one_line(capsys):
    assert main(["inspect", "--model", "vit-fmnist", "--recipe", "w5a5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recipe must be one of" in err[0]
