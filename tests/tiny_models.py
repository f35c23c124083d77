"""Tiny timm models with random weights shared by the tests (seeded: the same weights every call)."""

import timm
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer


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


def tiny_vit16(seed: int = 0) -> torch.nn.Module:
    """A 2-block grayscale ViT: 16 px, patch 4, dim 24, 2 heads, 10 classes, in eval mode (seeded by ``seed``)."""
    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=24, depth=2, num_heads=2
    ).eval()


def tiny_swin16(seed: int = 0) -> torch.nn.Module:
    """A 2-stage grayscale Swin: 16 px, patch 2, window 4, dim 12, depths (2, 2), in eval mode (seeded by ``seed``)."""
    torch.manual_seed(seed)
    return SwinTransformer(
        img_size=16, patch_size=2, in_chans=1, num_classes=10, embed_dim=12, depths=(2, 2), num_heads=(1, 2),
        window_size=4,
    ).eval()  # fmt: skip
