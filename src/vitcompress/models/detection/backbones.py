"""Detection backbones from timm classes: Swin + FPN, and a plain ViT + ViTDet's simple feature pyramid.

Both keep timm's modules (``SwinTransformer``, ``VisionTransformer`` and their attention and MLP
linears) under ``body``, so the quantization converters find them as in a classifier. Each returns an
ordered dict of pyramid maps ``"0"`` (stride 4) to ``"3"`` (stride 32) and ``"pool"`` (stride 64), all with
``out_channels`` channels: what torchvision's detection heads take.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import LayerNorm2d
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.nn import functional as F
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from vitcompress.models.detection.config import DetectorConfig


class SwinFPN(nn.Module):
    """Swin's four stages (strides 4, 8, 16, 32) through an FPN, plus a max-pooled stride-64 level."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.body = SwinTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            embed_dim=config.embed_dim,
            depths=config.depths,
            num_heads=config.num_heads,
            window_size=config.window_size,
        )
        # the pyramid takes the stages before Swin's final norm: drop it (timm's own pruning), or it holds a
        # layer no input reaches (a quantizer never calibrated, a weight no gradient trains)
        self.body.prune_intermediate_layers(len(config.depths), prune_norm=True)
        widths = [config.embed_dim * 2**i for i in range(len(config.depths))]
        self.fpn = FeaturePyramidNetwork(widths, config.fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = config.fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.body.forward_intermediates(x, intermediates_only=True)  # 4 x (B, C_i, H/s_i, W/s_i)
        return self.pyramid(stages)

    def pyramid(self, stages: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        """The pyramid of the four stage maps (B, C_i, H/s_i, W/s_i)."""
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(stages)))


class Upsample2x(nn.Sequential):
    """A 2x2, stride-2 transposed convolution written as a 1x1 convolution to 4x the channels + pixel shuffle.

    The two are the same map (the 2x2 output cells do not overlap: output channel ``o`` at offset ``(a, b)``
    is the 1x1 convolution's channel ``4o + 2a + b``), but this one is a ``Conv2d``, which the quantization
    converters know.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, 4 * out_channels, 1), nn.PixelShuffle(2))


class _Level(nn.Sequential):
    """ViTDet's per-level projection: 1x1 conv, LayerNorm, 3x3 conv, LayerNorm."""

    def __init__(self, width: int, channels: int):
        super().__init__(
            nn.Conv2d(width, channels, 1, bias=False),
            LayerNorm2d(channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            LayerNorm2d(channels),
        )


class ViTSimplePyramid(nn.Module):
    """A plain ViT's last map (stride 16) made into strides 4, 8, 16, 32 and 64 (ViTDet, arXiv:2203.16527).

    Stride 4: two 2x2 transposed convolutions (LayerNorm and GELU between; each as :class:`Upsample2x`); 8:
    one; 16: the map; 32: 2x2
    max-pooling; then each level's 1x1 + 3x3 projection. The ViT has no class token and global attention
    in every block (ViTDet's window attention is left out: 14 x 14 tokens cost little here).
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.body = VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=0,
            global_pool="",
            class_token=False,
            embed_dim=config.embed_dim,
            depth=config.depths[0],
            num_heads=config.num_heads[0],
            dynamic_img_size=True,
        )
        d, c = config.embed_dim, config.fpn_channels
        self.up4 = nn.Sequential(Upsample2x(d, d // 2), LayerNorm2d(d // 2), nn.GELU(), Upsample2x(d // 2, d // 4))
        self.up8 = Upsample2x(d, d // 2)
        self.levels = nn.ModuleList([_Level(w, c) for w in (d // 4, d // 2, d, d)])
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        (last,) = self.body.forward_intermediates(
            x, indices=1, norm=True, intermediates_only=True
        )  # (B, D, H/16, W/16)
        return self.pyramid(last)

    def pyramid(self, last: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """The five levels made from the normalised last map (B, D, H/16, W/16)."""
        maps = (self.up4(last), self.up8(last), last, F.max_pool2d(last, 2))
        out = OrderedDict((str(i), level(m)) for i, (level, m) in enumerate(zip(self.levels, maps)))
        out["pool"] = F.max_pool2d(out["3"], 1, 2)  # stride 64, as torchvision's LastLevelMaxPool
        return out


def build_backbone(config: DetectorConfig) -> nn.Module:
    """The backbone + pyramid of ``config`` (its ``out_channels`` the pyramid's width)."""
    return SwinFPN(config) if config.backbone == "swin" else ViTSimplePyramid(config)
