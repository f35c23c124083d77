"""``DetectorConfig``: a ViT or Swin backbone with a torchvision detection head, at sizes this CPU trains."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from vitcompress.errors import ConfigError
from vitcompress.options import option
from vitcompress.validate import integer, one_of, positive, positive_int, version

BACKBONES = ("swin", "vit")
HEADS = ("faster_rcnn", "mask_rcnn", "fcos", "retinanet")

# backbone -> defaults of the fields left None: small enough to train on a few CPU cores
_DEFAULTS = {
    "swin": {"embed_dim": 48, "depths": (2, 2, 2, 2), "num_heads": (2, 4, 8, 16), "patch_size": 4},
    "vit": {"embed_dim": 192, "depths": (6,), "num_heads": (3,), "patch_size": 16},
}


@dataclass(frozen=True)
class DetectorConfig:
    """A detector: backbone (timm classes), feature pyramid, torchvision head, input.

    The Swin backbone feeds its four stages (strides 4, 8, 16, 32) to an FPN (Lin et al., 2017, "Feature
    Pyramid Networks for Object Detection", arXiv:1612.03144); the plain ViT feeds its last map (stride 16)
    to ViTDet's simple feature pyramid (Li, Mao, Girshick, He, 2022, "Exploring Plain Vision Transformer
    Backbones for Object Detection", arXiv:2203.16527): deconvolutions to strides 4 and 8, the map itself at
    16, max-pooling to 32. Both add a stride-64 level by max-pooling the last one.

    Attributes:
        backbone: swin or vit
        head: faster_rcnn, mask_rcnn (boxes and instance masks), fcos or retinanet
        image_size: side of the square input, in pixels (the scenes' size)
        in_chans: image channels (1: the grey scenes)
        num_classes: object classes, background excluded (10: Fashion-MNIST)
        embed_dim: width (Swin: of the first stage, doubled per stage) (default: swin 48, vit 192)
        depths: blocks per stage (Swin, four values) or the block count (ViT, one value)
            (default: swin 2 2 2 2, vit 6)
        num_heads: attention heads per stage (Swin) or of every block (ViT) (default: swin 2 4 8 16, vit 3)
        patch_size: patch side in pixels (default: swin 4, vit 16)
        window_size: Swin attention window side, in patches
        fpn_channels: channels of every pyramid level and of the heads (fcos: a multiple of 32)
        roi_batch: RoIs sampled per image to train the box and mask heads (R-CNN heads; torchvision's
            default, 512, is for COCO's crowded images: a scene holds 2 to 6 items)
        test_proposals: RPN proposals kept per image at inference (R-CNN heads)
        mean: normalisation mean of the grey level (the default scenes' train split: 0.230)
        std: normalisation standard deviation of the grey level (the default scenes' train split: 0.232)
    """

    backbone: str = option("swin", choices=BACKBONES)
    head: str = option("mask_rcnn", choices=HEADS)
    image_size: int = 224
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int | None = None
    depths: tuple[int, ...] | None = None
    num_heads: tuple[int, ...] | None = None
    patch_size: int | None = None
    window_size: int = 7
    fpn_channels: int = 128
    roi_batch: int = 128
    test_proposals: int = 300
    mean: float = 0.23
    std: float = 0.23
    version: int = option(1, cli=False)

    def __post_init__(self) -> None:
        version("DetectorConfig", self.version)
        one_of("backbone", self.backbone, BACKBONES)
        one_of("head", self.head, HEADS)
        for name, value in _DEFAULTS[self.backbone].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in (
            "image_size",
            "num_classes",
            "embed_dim",
            "patch_size",
            "window_size",
            "fpn_channels",
            "roi_batch",
            "test_proposals",
        ):
            positive_int(name, getattr(self, name))
        integer("in_chans", self.in_chans, minimum=1, maximum=3)
        positive("std", self.std)
        if self.head == "fcos" and self.fpn_channels % 32:
            raise ConfigError(
                f"fpn_channels must be a multiple of 32 for fcos (its GroupNorm), got {self.fpn_channels}"
            )
        self._check_shape()

    def _check_shape(self) -> None:
        stages = 4 if self.backbone == "swin" else 1
        for name in ("depths", "num_heads"):
            value = tuple(getattr(self, name))
            if len(value) != stages:
                raise ConfigError(f"{name} takes {stages} value(s) for the {self.backbone} backbone, got {value!r}")
            for v in value:
                positive_int(name, v)
            object.__setattr__(self, name, value)
        stride = self.patch_size * (8 if self.backbone == "swin" else 1)  # the backbone's coarsest map
        if self.image_size % stride or self.image_size % 32:
            raise ConfigError(
                f"image_size must be a multiple of 32 and of the backbone's stride {stride}, got {self.image_size}"
            )
        if self.backbone == "swin" and (self.image_size // self.patch_size) % self.window_size:
            raise ConfigError(
                f"window_size must divide the first stage's {self.image_size // self.patch_size} patches, "
                f"got {self.window_size}"
            )

    def as_dict(self) -> dict:
        return asdict(self)

    def source(self) -> dict:
        """How to rebuild the detector: ``{"name": "det:<backbone>", "kwargs": {other fields}}`` (JSON types),
        as ``vitcompress_source`` / ``source.json`` record a model."""
        kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in self.as_dict().items()}
        return {"name": f"det:{kwargs.pop('backbone')}", "kwargs": {k: v for k, v in kwargs.items() if k != "version"}}
