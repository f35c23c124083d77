import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from vitcompress.config import QuantSpec, Recipe
from vitcompress.cost import cost, format_table, macs_by_block
from vitcompress.errors import ConfigError
from vitcompress.nn.convert import prepare, quantization_points


def tiny_vit():
    return VisionTransformer(img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=2,
                             num_heads=2).eval()


def tiny_swin():
    return SwinTransformer(img_size=16, patch_size=2, in_chans=1, num_classes=3, embed_dim=8, depths=(2, 2),
                           num_heads=(1, 2), window_size=4).eval()


def test_tiny_vit_hand_count():
    n, c = 17, 8  # 16 patches + CLS
    patch = 16 * c * 3 * 4 * 4
    block = n * c * 3 * c + 2 * (2 * n * n * (c // 2)) + n * c * c + 2 * n * c * 4 * c
    head = c * 3
    report = cost(tiny_vit())
    assert report.macs == patch + 2 * block + head
    rows = {r.name: r.macs for r in report.layers}
    assert rows["blocks.0.attn.qk"] == rows["blocks.0.attn.av"] == 2 * n * n * 4
    assert report.bops == report.macs * 32 * 32 and report.rel_bops == 1.0


def test_tiny_swin_hand_count():
    # stage 0: 8x8 tokens, C=8, window 4 -> 4 windows of 16 tokens, 1 head; stage 1: 4x4 tokens, C=16,
    # one 4x4 window, 2 heads. Patch merging: 16 tokens, 4C=32 -> 2C=16.
    def stage(tokens, c, win_tokens):
        return 2 * (12 * tokens * c * c + 2 * tokens * win_tokens * c)

    patch = 64 * 8 * 1 * 2 * 2
    merge = 16 * 32 * 16
    head = 16 * 3
    assert cost(tiny_swin()).macs == patch + stage(64, 8, 16) + merge + stage(16, 16, 16) + head


def test_deit_tiny_224_exact():
    n, c, depth = 197, 192, 12
    block = 12 * n * c * c + 2 * n * n * c
    expected = 196 * c * 3 * 16 * 16 + depth * block + c * 1000
    assert expected == 1_253_683_200
    assert cost(timm.create_model("deit_tiny_patch16_224")).macs == expected


def test_swin_tiny_224_exact():
    expected = 56 * 56 * 96 * 3 * 16  # patch embedding
    for s, depth in enumerate((2, 2, 6, 2)):
        c, tokens = 96 * 2**s, (56 // 2**s) ** 2
        expected += depth * (12 * tokens * c * c + 2 * tokens * 49 * c)
        if s < 3:
            expected += 2 * tokens * c * c  # patch merging into the next stage: (T/4)·4C·2C
    expected += 768 * 1000
    assert expected == 4_490_566_656
    assert cost(timm.create_model("swin_tiny_patch4_window7_224")).macs == expected


def test_bops_and_size_follow_the_bits():
    model = tiny_vit()
    params = sum(p.numel() for p in model.parameters())
    fp = cost(model)
    assert fp.fp_size_bytes == fp.size_bytes == 4 * params
    a8 = QuantSpec(8, "asymmetric")
    prepare(model, Recipe(weight=QuantSpec(4, "symmetric", "channel"), act=a8, qkv=QuantSpec(6, "asymmetric"),
                          probs=a8))
    q = cost(model)
    assert q.macs == fp.macs
    for r in q.layers:
        expected = r.macs * (4 * 8 if r.kind != "matmul" else (6 * 6 if r.name.endswith(".qk") else 8 * 6))
        assert r.bops == expected, r.name
    weights = sum(r.params for r in q.layers)
    channels = sum(model.get_submodule(r.name).weight.shape[0] for r in q.layers if r.kind != "matmul")
    assert q.size_bytes == (weights * 4 + channels * 32 + (params - weights) * 32 + 7) // 8


def test_group_bits_counted_per_channel():
    model = tiny_vit()
    recipe = Recipe(weight=QuantSpec(4, "symmetric", "group", group_size=4))
    prepare(model, recipe.with_overrides(("head.weight", {"granularity": "channel"})))  # 3 classes
    points = dict(quantization_points(model))
    points["blocks.0.mlp.fc1.weight"].set_group_bits([2, 8] * 4)  # 32 out channels = 8 groups
    row = next(r for r in cost(model).layers if r.name == "blocks.0.mlp.fc1")
    per_channel_macs = row.macs // 32
    assert row.bops == per_channel_macs * 8 * (16 * 2 + 16 * 8)  # inputs at 8 bit
    assert row.w_bits == 5.0


def test_storage_bits_hook():
    model = tiny_vit()
    model.blocks[0].mlp.fc1.storage_bits = lambda: 1000
    base = cost(tiny_vit()).size_bytes
    fc1 = model.blocks[0].mlp.fc1.weight.numel() * 32
    assert cost(model).size_bytes == base - fc1 // 8 + 1000 // 8


def test_macs_by_block_and_table():
    model = tiny_swin()
    blocks = macs_by_block(model)
    assert set(blocks) >= {"layers.0.blocks.0", "layers.0.blocks.1", "layers.1.blocks.1", "patch_embed", "head"}
    assert sum(blocks.values()) == cost(model).macs
    assert "relative BOPs" in format_table(cost(model))


def test_input_size_mismatch_is_an_error():
    with pytest.raises(ConfigError, match="input_size"):
        cost(tiny_vit(), input_size=32)


def test_cost_leaves_model_mode_and_quantizers_alone():
    model = tiny_vit().train()
    prepare(model, Recipe())
    cost(model)
    assert model.training and all(q.enabled for _, q in quantization_points(model))
    assert torch.is_grad_enabled()
