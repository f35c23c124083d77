"""Quantized modules (nn.convert, attention, linear): point names, overrides, float equivalence."""

import copy

import pytest
import timm
import torch
from torch import nn

from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.models import load_model
from vitcompress.models.zoo import ZOO, build_zoo_model
from vitcompress.nn.convert import float_modules, prepare, quantization_points, set_quantizers
from vitcompress.quantize import quantize_
from vitcompress.report.analysis import sqnr_db


def _zoo(name):
    """The shipped reference model if trained, else the same architecture with random weights."""
    return load_model(name) if ZOO[name].checkpoint.is_file() else build_zoo_model(name).eval()


def _input(model, n=2, seed=0):
    size = model.patch_embed.img_size[0]
    return torch.randn(n, model.patch_embed.proj.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


MODELS = {
    "vit-fmnist": lambda: _zoo("vit-fmnist"),
    "swin-fmnist": lambda: _zoo("swin-fmnist"),
    "deit_tiny_patch16_224": lambda: timm.create_model("deit_tiny_patch16_224").eval(),
    "deit_tiny_distilled_patch16_224": lambda: timm.create_model("deit_tiny_distilled_patch16_224").eval(),
    "swin_tiny_patch4_window7_224": lambda: timm.create_model("swin_tiny_patch4_window7_224").eval(),
}


@pytest.mark.parametrize("name", MODELS)
def test_disabled_quantizers_are_bit_identical_to_float(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    reference = copy.deepcopy(model)
    prepare(model, get_preset("fqvit-w4a4"))
    set_quantizers(model, False)
    x = _input(model, n=1 if "224" in name else 4)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_16_bit_everything_matches_float_closely(name):
    # exercises the explicit attention path (relative position bias and shift mask for Swin)
    model = MODELS[name]()
    reference = copy.deepcopy(model)
    a16 = QuantSpec(16, "asymmetric")
    recipe = Recipe(weight=QuantSpec(16, "symmetric", "channel"), act=a16, qkv=a16, probs=a16, norm=a16)
    x = _input(model, 8)
    quantize_(model, recipe, [x])
    with torch.no_grad():
        assert sqnr_db(reference(x), model(x)) > 50.0  # dB


def test_point_names_cover_every_quantized_op():
    model = build_zoo_model("swin-fmnist")
    prepare(model, get_preset("w8a8"))
    names = {n for n, _ in quantization_points(model)}
    for expected in (
        "patch_embed.proj.weight",
        "patch_embed.proj.input",
        "layers.0.blocks.1.attn.q",
        "layers.0.blocks.1.attn.k",
        "layers.0.blocks.1.attn.v",
        "layers.0.blocks.1.attn.probs",
        "layers.0.blocks.1.attn.qkv.weight",
        "layers.0.blocks.1.mlp.fc2.input",
        "layers.1.downsample.reduction.weight",
        "layers.0.blocks.0.norm1.input",
        "head.fc.weight",
    ):
        assert expected in names


class _WeightMatmul(nn.Module):
    """Multiplies by its own parameter with ``@``: nothing quantizes that weight."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.w


def test_unknown_layers_error_names_every_module_nothing_quantizes():
    conv1d = [nn.Unflatten(1, (1, 4)), nn.Conv1d(1, 1, 3, padding=1), nn.Flatten()]
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), *conv1d, _WeightMatmul()).eval()
    x = torch.randn(2, 4)
    expected = r"3 \(Conv1d: no quantized version of Conv1d\); 5 \(_WeightMatmul: matmul0 multiplies parameter 5.w"
    with pytest.raises(UnsupportedModelError, match=expected):
        prepare(copy.deepcopy(model), Recipe(), example_input=x)
    prepare(model, Recipe(unknown_layers="float"), example_input=x)
    assert [(f.name, f.type) for f in float_modules(model)] == [("3", "Conv1d"), ("5", "_WeightMatmul")]
    assert isinstance(model[1], nn.BatchNorm1d)  # a norm carries no multiply-accumulates: not listed


def test_a_forward_that_fails_on_the_declared_input_names_the_input_size():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match=r"does not say which image size it takes.*example_input"):
        prepare(model, Recipe())
    model.pretrained_cfg = {"input_size": (3, 8, 8)}
    with pytest.raises(UnsupportedModelError, match=r"input shape \(1, 3, 8, 8\).*--input-size"):
        prepare(model, Recipe())


def test_weights_at_32_bit_are_listed_as_float():
    model = build_zoo_model("vit-fmnist")
    prepare(model, get_preset("w8a8").with_overrides(("head.weight", {"bits": 32})))
    assert [(f.name, f.type) for f in float_modules(model)] == [("head", "Linear")]


def test_override_matching_nothing_is_an_error():
    model = build_zoo_model("vit-fmnist")
    with pytest.raises(ConfigError, match="blocks.99"):
        prepare(model, Recipe().with_overrides(("blocks.99.*", {"bits": 4})))


def test_overrides_reach_the_quantizers():
    model = build_zoo_model("vit-fmnist")
    prepare(model, get_preset("w4a4").with_overrides(("blocks.2.mlp.fc1.weight", {"bits": 2})))
    points = dict(quantization_points(model))
    assert points["blocks.2.mlp.fc1.weight"].spec.bits == 2
    assert points["blocks.3.mlp.fc1.weight"].spec.bits == 4
    assert points["head.weight"].spec.bits == 8 and points["patch_embed.proj.input"].spec.bits == 8


def test_quantized_attention_does_not_share_hook_containers_with_the_float_module():
    from vitcompress.nn.attention import QuantAttention

    attn = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1).blocks[0].attn
    q = QuantAttention.from_float(attn, {p: QuantSpec(32) for p in ("q", "k", "v", "probs")}, "blocks.0.attn")
    fired = []
    q.register_forward_hook(lambda *a: fired.append("q"))
    attn(torch.randn(1, 17, attn.qkv.in_features))
    assert fired == [] and q._forward_hooks is not attn._forward_hooks
    assert q.qkv is attn.qkv and q.head_dim == attn.head_dim  # parameters and attributes are still shared
