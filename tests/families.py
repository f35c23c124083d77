"""Every vision-transformer family the toolkit supports, as small random-weight timm models.

``build(family)`` returns a seeded model in eval mode, with 10 classes and LayerScale-style
parameters set to 0.1 (timm initialises them to 1e-5/1e-6, which makes random DeiT-III, DINOv2, CaiT,
XCiT and BEiT outputs nearly input-independent), and ``input_shape(family)`` the (C, H, W) it takes.
Shared by the quantization, cost and export tests; the heavy families are ``SLOW``.
"""

from __future__ import annotations

import re

import timm
import torch

# family -> (timm model name, keyword arguments that shrink it, square input size)
FAMILIES: dict[str, tuple[str, dict, int]] = {
    "vit": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "deit3": ("deit3_small_patch16_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", dict(img_size=28, patch_size=7, depth=2), 28),
    "clip_vit": ("vit_base_patch16_clip_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2), 32),
    "flexivit": ("flexivit_small", dict(img_size=32, patch_size=8, depth=2), 32),
    "swin": (
        "swin_tiny_patch4_window7_224",
        dict(img_size=56, window_size=7, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
        56,
    ),
    "beit": ("beit_base_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=2), 32),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, patch_size=7, depth=2), 28),
    "swinv2": (
        "swinv2_tiny_window8_256",
        dict(img_size=64, window_size=8, depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8)),
        64,
    ),
    "cait": ("cait_xxs24_224", dict(img_size=32, patch_size=8, depth=2), 32),
    "xcit": ("xcit_nano_12_p16_224", dict(img_size=32, depth=2), 32),
    "convit": ("convit_tiny", dict(img_size=32, patch_size=8, depth=2), 32),
    "pit": ("pit_ti_224", dict(img_size=64), 64),
    "levit": ("levit_128s", dict(img_size=64), 64),
    "twins": ("twins_pcpvt_small", dict(img_size=64, depths=(1, 1, 1, 1)), 64),
    "mobilevit": ("mobilevit_xxs", dict(), 64),
    "efficientvit_mit": ("efficientvit_b0", dict(), 64),
    "efficientvit_msra": ("efficientvit_m0", dict(img_size=64), 64),
}
"""The timm families (HF ViT/DeiT/Swin are built in tests/models/test_hf.py's way, from transformers configs)."""

# the families timm's VisionTransformer / SwinTransformer classes cover (fast, supported before issue 14)
CORE = ("vit", "deit_distilled", "deit3", "dinov2_reg", "clip_vit", "flexivit", "swin")
LAYER_SCALE = re.compile(r"(^|\.)(ls\d\.gamma|gamma_?\d)$")


def build(family: str, layer_scale: float | None = 0.1, seed: int = 0) -> torch.nn.Module:
    """A seeded random-weight ``family`` model (eval mode, 10 classes), LayerScale set to ``layer_scale``."""
    name, kwargs, _ = FAMILIES[family]
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    # timm keeps the pretrained 224-px input_size after img_size=...: state the size the model takes
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": input_shape(family)}
    if layer_scale is not None:
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if LAYER_SCALE.search(pname):
                    p.fill_(layer_scale)
    return model


def input_shape(family: str) -> tuple[int, int, int]:
    """(channels, height, width) of ``family``'s input."""
    size = FAMILIES[family][2]
    return (3, size, size)


def images(family: str, n: int = 8, seed: int = 1) -> torch.Tensor:
    """``n`` seeded inputs for ``family``: smooth random images (normalised), closer to real images than
    white noise (neighbouring pixels correlate, so patch tokens differ in scale from the class token)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = input_shape(family)
    coarse = torch.randn(n, c, max(h // 8, 2), max(w // 8, 2), generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
