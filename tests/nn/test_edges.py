"""``@stem``/``@head`` override patterns resolve to each model's real first layer and classifier."""

import pytest
import torch
from torch import nn

from families import build
from vitcompress.config import EDGE_8BIT, QuantSpec, Recipe, get_preset
from vitcompress.nn.edges import edge_modules, resolve_edges

EXPECTED = {
    "vit": (["patch_embed.proj"], ["head"]),
    "deit_distilled": (["patch_embed.proj"], ["head", "head_dist"]),
    "swin": (["patch_embed.proj"], ["head.fc"]),
    "xcit": (["patch_embed.proj.0.0"], ["head"]),
    "pit": (["patch_embed.conv"], ["head"]),
    "levit": (["stem.conv1.linear"], ["head", "head_dist"]),
    "twins": (["patch_embeds.0.proj"], ["head"]),
    "mobilevit": (["stem.conv"], ["head.fc"]),
    "efficientvit_mit": (["stem.in_conv.conv"], ["head.classifier.4"]),
    "efficientvit_msra": (["patch_embed.conv1.conv"], ["head.linear"]),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_edges_are_the_models_first_conv_and_classifier(family):
    stem, head = EXPECTED[family]
    assert edge_modules(build(family)) == {"@stem": stem, "@head": head}


def test_resolved_recipe_keeps_precedence_and_expands_each_edge():
    recipe = Recipe(overrides=(("blocks.0.*", {"bits": 4}), *EDGE_8BIT, ("*", {"bits": 6})))
    out = resolve_edges(recipe, build("deit_distilled"))
    assert [p for p, _ in out.overrides] == ["blocks.0.*", "patch_embed.proj.*", "head.*", "head_dist.*", "*"]
    assert resolve_edges(get_preset("w8a8"), build("vit")).overrides == (
        ("patch_embed.proj.*", (("bits", 8),)),
        ("head.*", (("bits", 8),)),
    )


def test_recipe_without_edges_is_returned_unchanged():
    recipe = Recipe(overrides=(("head*", {"bits": 8}),))
    assert resolve_edges(recipe, build("vit")) is recipe


def test_model_without_classifier_drops_the_head_edge():
    model = build("vit")
    model.reset_classifier(0)  # head becomes Identity: nothing to keep at 8 bit
    out = resolve_edges(get_preset("w4a4"), model)
    assert [p for p, _ in out.overrides] == ["patch_embed.proj.*"]


def test_plain_module_falls_back_to_first_and_last_registered_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 4, 4), nn.Flatten(), nn.Linear(8 * 4, 16), nn.ReLU(), nn.Linear(16, 10))
    assert edge_modules(model) == {"@stem": ["0"], "@head": ["4"]}


@pytest.mark.parametrize("family", ["levit", "efficientvit_msra"])
def test_presets_keep_non_vit_edges_at_8_bit(family):
    """A preset applied to a model without ``patch_embed.proj``/``head`` pins its real stem and classifier."""
    from vitcompress import quantize_
    from vitcompress.nn.convert import quantization_points

    recipe = Recipe(weight=QuantSpec(4, "symmetric", "channel"), act=QuantSpec(32), qkv=QuantSpec(32),
                    probs=QuantSpec(32), overrides=EDGE_8BIT, unknown_layers="float")  # fmt: skip
    calib = [torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))]
    model = quantize_(build(family), recipe, calib)
    bits = {name: qz.spec.bits for name, qz in quantization_points(model) if name.endswith(".weight")}
    stem, heads = EXPECTED[family]
    edges = [n for n in bits if n.startswith(tuple(f"{m}." for m in stem + heads))]
    assert edges and all(bits[n] == 8 for n in edges)
    assert any(b == 4 for n, b in bits.items() if n not in edges)
    assert torch.isfinite(model(calib[0])).all()
