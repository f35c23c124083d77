"""Tiny timm models with random weights shared by the tests (seeded: the same weights every call)."""

import timm
import torch


def tiny_vit(drop_path: float = 0.0) -> torch.nn.Module:
    """A 2-block ViT: 32 px, patch 8, dim 32, 2 heads, 10 classes."""
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=10, drop_path_rate=drop_path,
    )  # fmt: skip


def tiny_swin() -> torch.nn.Module:
    """A 2-stage grayscale Swin: 32 px, patch 2, window 4, dim 16, 10 classes."""
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, patch_size=2, in_chans=1, embed_dim=16,
        depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=10,
    )  # fmt: skip
