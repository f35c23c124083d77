"""Hugging Face ``transformers`` ViT / DeiT / Swin modules quantized as they are (not converted to timm):
their attention is found by what it computes, in both attention implementations (``eager``: matmul,
softmax, matmul; ``sdpa``: fused attention run explicitly). Quantizers off => bit-identical; every
attention block quantized; W8A8 logits SQNR >= 20 dB (observed 34-38 dB)."""

import copy

import pytest
import torch

from vitcompress.config import get_preset
from vitcompress.nn.convert import attention_summary, float_modules, prepare, set_quantizers
from vitcompress.quantize import quantize_
from vitcompress.report.analysis import sqnr_db

transformers = pytest.importorskip("transformers")

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, num_labels=5)
SWIN = dict(embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4], image_size=32, patch_size=2, window_size=4)
BUILDERS = {
    "vit": lambda: transformers.ViTForImageClassification(transformers.ViTConfig(**VIT, intermediate_size=37)),
    "deit": lambda: transformers.DeiTForImageClassificationWithTeacher(
        transformers.DeiTConfig(**VIT, intermediate_size=64)
    ),
    "swin": lambda: transformers.SwinForImageClassification(transformers.SwinConfig(**SWIN, num_labels=5)),
}
ATTENTION_BLOCKS = {"vit": 2, "deit": 2, "swin": 6}
CASES = [
    ("vit", "sdpa"),
    pytest.param("vit", "eager", marks=pytest.mark.slow),
    pytest.param("deit", "sdpa", marks=pytest.mark.slow),
    pytest.param("swin", "eager", marks=pytest.mark.slow),
    pytest.param("swin", "sdpa", marks=pytest.mark.slow),
]


def _model(name, attention):
    torch.manual_seed(0)
    model = BUILDERS[name]().eval()
    model.set_attn_implementation(attention)
    with torch.no_grad():  # random init leaves some weights 0/1: perturb them so every tensor matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize(("name", "attention"), CASES)
def test_hf_modules_quantize(name, attention):
    model = _model(name, attention)
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    off = prepare(copy.deepcopy(model), get_preset("w8a8"))
    set_quantizers(off, False)
    with torch.no_grad():
        assert torch.equal(off(x).logits, reference(x).logits)
    quantize_(model, get_preset("w8a8"), [x])
    summary = attention_summary(model)
    assert summary.attention_modules == summary.quantized_attention == ATTENTION_BLOCKS[name]
    assert float_modules(model) == []
    held_out = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert sqnr_db(reference(held_out).logits, model(held_out).logits) >= 20.0  # dB
