"""``SceneDataset``: built scenes as (image tensor, target dict) in torchvision's detection format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vitcompress.data.datasets import FMNIST_CLASSES
from vitcompress.data.scenes import rle
from vitcompress.data.scenes.build import SPLITS, annotation_file, ensure_scenes
from vitcompress.data.scenes.config import SceneConfig
from vitcompress.errors import DataError


class SceneDataset(Dataset):
    """One split of a built scene folder.

    An item is ``(image, target)``: the image a (1, H, W) float tensor in [0, 1]; the target a dict with
    ``boxes`` (N, 4) float ``x1, y1, x2, y2`` in pixels, ``labels`` (N,) int64 COCO category ids (1..10 =
    Fashion-MNIST class + 1; 0 is torchvision's background), ``masks`` (N, H, W) uint8 (when ``masks``),
    ``image_id`` (the COCO image id), ``area`` (N,) mask pixels and ``iscrowd`` (N,) zeros.

    Attributes:
        root: the built folder; ``coco``: the split's COCO annotation dict (what evaluation compares with).
    """

    classes = FMNIST_CLASSES
    root_name = "Fashion-MNIST scenes"

    @staticmethod
    def collate_fn(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
        """How a DataLoader batches scenes (calibration and evaluation use it): :func:`collate_detection`."""
        return collate_detection(batch)

    def __init__(self, root: str | Path, split: str = "val", masks: bool = True):
        if split not in SPLITS:
            raise DataError(f"scene split must be one of {sorted(SPLITS)}, got {split!r}")
        self.root, self.split, self.masks = Path(root), split, masks
        path = annotation_file(self.root, split)
        try:
            self.coco = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read scene annotations {path}: {e}") from None
        self.images = self.coco["images"]
        self._annotations: dict[int, list[dict]] = {im["id"]: [] for im in self.images}
        for ann in self.coco["annotations"]:
            self._annotations[ann["image_id"]].append(ann)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        info = self.images[i]
        with Image.open(self.root / info["file_name"]) as im:
            pixels = np.asarray(im.convert("L"))
        image = torch.from_numpy(pixels.copy()).unsqueeze(0).float().div_(255.0)  # (1, H, W)
        return image, self.target(i)

    def target(self, i: int) -> dict:
        """The target dict of image ``i`` (no image read)."""
        info = self.images[i]
        anns = self._annotations[info["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO x, y, w, h -> x1, y1, x2, y2
        target = {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": int(info["id"]),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
        }
        if self.masks:
            h, w = info["height"], info["width"]
            masks = [torch.from_numpy(rle.decode(a["segmentation"])) for a in anns]
            target["masks"] = torch.stack(masks) if masks else torch.zeros((0, h, w), dtype=torch.uint8)
        return target


def load_scenes(
    split: str = "val",
    config: SceneConfig | None = None,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    masks: bool = True,
) -> SceneDataset:
    """One split of the scenes of ``config``, built into the cache on first use.

    Args:
        split: ``"train"`` or ``"val"``.
        config: the scene options (None: the default, the benchmark's).
        cache_dir: where builds are kept (default ``$VITCOMPRESS_CACHE`` or ``~/.cache/vitcompress``).
        data_root: Fashion-MNIST idx folder (default: Debian's dataset-fashion-mnist location).
        masks: decode instance masks into the targets (off: boxes only, faster).
    """
    if split not in SPLITS:
        raise DataError(f"scene split must be one of {sorted(SPLITS)}, got {split!r}")
    return SceneDataset(ensure_scenes(config, cache_dir, data_root), split, masks=masks)


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """DataLoader ``collate_fn`` for detection: a list of images and a list of targets (sizes may differ)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
