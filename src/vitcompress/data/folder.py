"""Image folders (one sub-folder per class, the ImageNet/torchvision layout), with one-line errors.

``ImageFolderData`` is torchvision's ``ImageFolder`` contract (``samples``, ``targets``, ``classes``,
``class_to_idx``; classes are the sorted sub-folder names; files are found recursively by extension)
with errors that name the folder or file: no class folders, an empty class folder, an image that
cannot be decoded, a class of the evaluation folder that the calibration folder does not have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from vitcompress.data.datasets import base_dataset
from vitcompress.errors import DataError, first_line

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale PNG/TIFF


def read_image(path: str | Path):
    """Decode one image file into a PIL image (fully loaded).

    Raises:
        DataError: the file cannot be read or decoded (naming it).
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.mode not in _WIDE_GRAY else _to_8bit(img)
    except Exception as e:  # any decoder failure (OSError, SyntaxError, ValueError, DecompressionBombError)
        raise DataError(f"cannot read image {path}: {first_line(e)}") from None


def _to_8bit(img):
    """A 16-bit grayscale image as 8-bit ``"L"`` (PIL's own conversion would clip at 255)."""
    from PIL import Image

    arr = np.asarray(img, dtype=np.float64) / 257.0
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")


def find_classes(root: Path) -> list[str]:
    """The class folders of ``root``, sorted (hidden folders skipped).

    Raises:
        DataError: ``root`` is not a folder, or has no class folders.
    """
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {root} has no class folders: put each class's images in {root}/<class name>/")
    return classes


def _images_in(folder: Path) -> list[Path]:
    files = (
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMG_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    images = sorted(p for p in files if p.is_file())
    if not images:
        raise DataError(f"class folder {folder} holds no images (extensions: {' '.join(IMG_EXTENSIONS)})")
    return images


class ImageFolderData(Dataset):
    """Images of ``root/<class>/...`` as ``(transform(image), class index)``.

    Args:
        root: the folder of class folders.
        transform: a callable on a PIL image returning a tensor (e.g. a model's preprocessing).
        classes: the class list the labels index (e.g. the calibration folder's, so that an evaluation
            folder with fewer classes keeps the same labels); default: ``root``'s own class folders.
        workers: the DataLoader workers :func:`~vitcompress.data.datasets.make_loader` uses for it.

    Raises:
        DataError: no class folders, an empty class folder, or a class not in ``classes``.
    """

    def __init__(self, root: str | Path, transform: Callable, classes: Iterable[str] | None = None, workers: int = 0):
        self.root = Path(root)
        own = find_classes(self.root)
        self.classes = list(classes) if classes is not None else own
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = [c for c in own if c not in self.class_to_idx]
        if unknown:
            raise DataError(
                f"class folder {self.root / unknown[0]} is not one of the {len(self.classes)} classes of the "
                "calibration images; the evaluation folder's classes must be among them"
            )
        self.samples = [(p, self.class_to_idx[c]) for c in own for p in _images_in(self.root / c)]
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.loader_workers = workers
        self.generator = getattr(transform, "generator", None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.samples[i]
        return self.transform(read_image(path)), target


def verify_images(dataset: Dataset) -> int:
    """Decode every image file a dataset (or a Subset of one) reads, so a bad file fails early.

    Returns the number of files checked (0 for data that is not an image folder).

    Raises:
        DataError: the first file that cannot be decoded, named.
    """
    indices = None
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices] if indices is not None else list(dataset.indices)
        dataset = dataset.dataset
    if not isinstance(base_dataset(dataset), ImageFolderData):
        return 0
    samples = dataset.samples if indices is None else [dataset.samples[i] for i in indices]
    for path, _ in samples:
        read_image(path)
    return len(samples)
