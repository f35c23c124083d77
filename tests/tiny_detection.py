"""Tiny detectors and scenes shared by the detection tests (seeded: the same weights and bytes every call)."""

from pathlib import Path

import torch

from vitcompress.data.scenes import SceneConfig, SceneDataset, build_scenes
from vitcompress.models.detection import DetectorConfig, build_detector

SIZE = 64
TINY_BACKBONES = {
    "swin": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4),
    "vit": dict(embed_dim=32, depths=(1,), num_heads=(2,)),
}
TINY_SCENES = SceneConfig(
    image_size=SIZE, train_size=8, val_size=4, min_items=1, max_items=3, min_item_size=12, max_item_size=40
)


def tiny_config(backbone: str = "swin", head: str = "faster_rcnn") -> DetectorConfig:
    """A 64-px detector with one block per stage and a 32-channel pyramid."""
    return DetectorConfig(backbone=backbone, head=head, image_size=SIZE, fpn_channels=32, **TINY_BACKBONES[backbone])


def tiny_detector(backbone: str = "swin", head: str = "faster_rcnn") -> torch.nn.Module:
    """:func:`tiny_config`'s detector with seeded random weights, in eval mode."""
    torch.manual_seed(0)
    return build_detector(tiny_config(backbone, head)).eval()


def tiny_scenes(cache: Path) -> tuple[SceneDataset, SceneDataset]:
    """(train, val) of 8 and 4 scenes of 64 px, built into ``cache`` (boxes only)."""
    root = build_scenes(TINY_SCENES, cache_dir=cache)
    return SceneDataset(root, "train", masks=False), SceneDataset(root, "val", masks=False)


def use_tiny_scenes(monkeypatch, train: SceneDataset, val: SceneDataset) -> None:
    """Make jobs and the eval command calibrate and evaluate detectors on ``train``/``val`` (not the default scenes)."""
    from vitcompress import jobs
    from vitcompress.eval import task

    def splits(model, source=None, data_root=None, needs_train=False):
        return train, val, {"scenes": "tiny"}

    monkeypatch.setattr(jobs, "detection_splits", splits)
    monkeypatch.setattr(task, "detection_splits", splits)
