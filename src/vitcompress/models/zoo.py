"""The reference models: small timm ViT and Swin trained on Fashion-MNIST by this project.

No pretrained ViT weights exist offline, so the project trains its own with a documented, seeded
recipe (``vitcompress zoo train NAME``) and ships the checkpoints (safetensors + manifest) in
``models/zoo/``. They are built from timm's own classes, so they are what users have.

The reference detectors (:data:`DETECTOR_ZOO`: a Swin and a ViT detector on the embedded scenes,
``docs/detection.md``) are trained by the same command with ``vitcompress.train.detection``'s recipe and kept
as detector folders ``models/zoo/<name>/`` (+ ``<name>.json``, their manifest), shipped like the classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).parent / "zoo"


@dataclass(frozen=True)
class TrainRecipe:
    """Seeded training recipe of a reference model (AdamW, warm-up + cosine, label smoothing).

    Written in epochs of the training set; the zoo trainer (``train/zoo.py``) runs it as
    ``epochs × (len(train_set) // batch_size)`` optimizer steps of the generic trainer, with
    ``int(warmup_epochs × steps per epoch)`` warm-up steps and one checkpoint per epoch.

    Attributes:
        epochs: passes over the training set.
        batch_size: images per optimizer step.
        lr, min_lr: peak and final learning rate of the warm-up + cosine schedule.
        weight_decay: AdamW decoupled weight decay (not on biases, norms, embeddings and tokens).
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        label_smoothing: of the cross-entropy loss.
        grad_clip: max gradient norm (0 = off).
        seed: seeds the initial weights, the batch order and the augmentation.
    """

    epochs: int
    batch_size: int = 128
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class ZooEntry:
    """One reference model: timm class, constructor kwargs, input and training recipe."""

    name: str
    arch: str  # "vit" | "swin"
    kwargs: dict[str, Any] = field(hash=False)
    recipe: TrainRecipe
    description: str

    @property
    def checkpoint(self) -> Path:
        return ZOO_DIR / f"{self.name}.safetensors"

    @property
    def manifest(self) -> Path:
        return ZOO_DIR / f"{self.name}.json"


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="vit-fmnist",
            arch="vit",
            kwargs=dict(
                img_size=28,
                patch_size=4,
                in_chans=1,
                num_classes=10,
                embed_dim=96,
                depth=6,
                num_heads=3,
                mlp_ratio=4.0,
                drop_path_rate=0.0,
            ),
            recipe=TrainRecipe(epochs=25),
            description="DeiT-Tiny-style ViT: 28x28, patch 4 (49 tokens + CLS), dim 96, depth 6, 3 heads",
        ),
        ZooEntry(
            name="swin-fmnist",
            arch="swin",
            kwargs=dict(
                img_size=32,
                patch_size=2,
                in_chans=1,
                num_classes=10,
                embed_dim=24,
                depths=(2, 2, 6, 2),
                num_heads=(1, 2, 4, 8),
                window_size=4,
                mlp_ratio=4.0,
                drop_path_rate=0.05,
            ),
            recipe=TrainRecipe(epochs=15),
            description="Swin-T depths (2,2,6,2) scaled down: 32x32 (28 padded), patch 2, window 4 "
            "(16 windows in stage 1), dim 24, heads (1,2,4,8)",
        ),
    )
}


def build_zoo_model(name: str):
    """Instantiate a zoo architecture with random weights (timm's own classes)."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    entry = ZOO[name]
    cls = VisionTransformer if entry.arch == "vit" else SwinTransformer
    return cls(**entry.kwargs)


@dataclass(frozen=True)
class DetectorZooEntry:
    """One reference detector: its ``DetectorConfig`` fields (default sizes) and description.

    Trained by ``vitcompress zoo train NAME`` (``vitcompress.train.zoo.train_zoo_detector``, the recipe of
    ``vitcompress.train.detection``), kept as a detector folder (``save_detector``) in :attr:`folder`.
    """

    name: str
    detector: dict[str, Any] = field(hash=False)  # DetectorConfig fields, backbone included
    description: str

    @property
    def folder(self) -> Path:
        return ZOO_DIR / self.name

    @property
    def manifest(self) -> Path:
        return ZOO_DIR / f"{self.name}.json"

    @property
    def train_command(self) -> str:
        return f"vitcompress zoo train {self.name}"

    def config(self):
        """The entry's :class:`~vitcompress.models.detection.DetectorConfig`."""
        from vitcompress.models.detection.config import DetectorConfig

        return DetectorConfig(**self.detector)


DETECTOR_ZOO: dict[str, DetectorZooEntry] = {
    e.name: e
    for e in (
        DetectorZooEntry(
            name="swin-det-scenes",
            detector=dict(backbone="swin", head="mask_rcnn"),
            description="Swin (dim 48, depths 2-2-2-2, window 7) + FPN + Mask R-CNN on the 224-px scenes",
        ),
        DetectorZooEntry(
            name="vit-det-scenes",
            detector=dict(backbone="vit", head="mask_rcnn"),
            description="plain ViT (dim 192, depth 6, patch 16) + simple feature pyramid + Mask R-CNN, 224-px scenes",
        ),
    )
}


def zoo_names() -> list[str]:
    """Every reference model name: the classifiers, then the detectors."""
    return sorted(ZOO) + sorted(DETECTOR_ZOO)
