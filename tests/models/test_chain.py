"""``models.chain``: a timm ViT/DeiT or Swin as a chain of steps that composes to the model bit for bit."""

import pytest
import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from vitcompress.config import get_preset
from vitcompress.errors import UnsupportedModelError
from vitcompress.models.chain import model_chain
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=24, depth=2, num_heads=2
    ).eval()


def tiny_swin() -> SwinTransformer:
    torch.manual_seed(0)
    return SwinTransformer(
        img_size=16,
        patch_size=2,
        in_chans=1,
        num_classes=10,
        embed_dim=12,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=4,
    ).eval()


def tiny_distilled():
    torch.manual_seed(0)
    return timm.create_model(
        "deit_tiny_distilled_patch16_224",
        img_size=16,
        patch_size=4,
        in_chans=1,
        embed_dim=24,
        depth=2,
        num_heads=2,
        num_classes=10,
    ).eval()


def calib() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(16, 1, 16, 16, generator=g) for _ in range(2)]


@pytest.mark.parametrize("make", [tiny_vit, tiny_swin])
def test_logits_chain_of_float_and_quantized_models_is_the_model_bit_for_bit(make):
    x = torch.randn(4, 1, 16, 16)
    for model in (make(), quantize_(make(), get_preset("w4a8"), calib())):
        chain = model_chain(model, "logits", check=x)  # raises unless torch.equal
        with torch.no_grad():
            expected = model(x)
            assert torch.equal(chain.run(x), expected)
            inputs, out = chain.inputs(x)
            assert torch.equal(out, expected)
            for start in range(len(chain.steps)):  # any stretch of steps continues exactly
                for stop in range(start, len(chain.steps) + 1):
                    assert torch.equal(
                        chain.run(inputs[start], start, stop), inputs[stop] if stop < len(chain.steps) else out
                    )


def test_block_steps_are_the_transformer_blocks():
    vit, swin = model_chain(tiny_vit(), "logits"), model_chain(tiny_swin(), "logits")
    assert [vit.names[i] for i in vit.block_steps()] == ["blocks.0", "blocks.1"]
    assert swin.names == (
        "patch_embed",
        "layers.0.downsample",
        "layers.0.blocks.0",
        "layers.0.blocks.1",
        "layers.1.downsample",
        "layers.1.blocks.0",
        "layers.1.blocks.1",
        "norm",
    )
    assert [swin.names[i] for i in swin.block_steps()] == [
        "layers.0.blocks.0",
        "layers.0.blocks.1",
        "layers.1.blocks.0",
        "layers.1.blocks.1",
    ]


def test_distilled_deit_only_when_asked():
    model = tiny_distilled()
    with pytest.raises(UnsupportedModelError, match="no distillation token"):
        model_chain(model, "logits")
    x = torch.randn(4, 1, 16, 16)
    chain = model_chain(model, "logits", check=x, distilled=True)  # both heads, averaged, bit for bit
    with torch.no_grad():
        assert torch.equal(chain.run(x), model(x))
