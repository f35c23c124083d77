"""Dataset loading, model-fitting transforms and calibration subsets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from vitcompress.data.idx import read_idx
from vitcompress.errors import DataError
from vitcompress.validate import integer

log = logging.getLogger(__name__)

DEFAULT_FMNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: square image size, channel count and normalisation.

    ``mean``/``std`` are one value for every channel, or a tuple of one value per channel.
    """

    img_size: int
    in_chans: int
    mean: float | tuple[float, ...] = FMNIST_MEAN
    std: float | tuple[float, ...] = FMNIST_STD

    def __post_init__(self) -> None:
        if self.img_size < 8:
            raise DataError(f"InputSpec.img_size must be >= 8, got {self.img_size}")
        if self.in_chans not in (1, 3):
            raise DataError(f"InputSpec.in_chans must be 1 or 3, got {self.in_chans}")


def fit_to_model(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Fit a float image batch or image (…, C, H, W) in [0, 1] to the model's input.

    Smaller images are zero-padded symmetrically when the difference is even (exact pixels, as
    LeNet did for MNIST), otherwise resized bilinearly; channels are replicated 1 -> 3 or averaged
    3 -> 1; then normalised.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    h, w = x.shape[-2:]
    if (h, w) != (spec.img_size, spec.img_size):
        dh, dw = spec.img_size - h, spec.img_size - w
        if dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0:
            x = F.pad(x, (dw // 2, dw // 2, dh // 2, dh // 2))
        else:
            x = F.interpolate(x, size=(spec.img_size, spec.img_size), mode="bilinear", antialias=True)
    c = x.shape[-3]
    if c != spec.in_chans:
        x = x.expand(-1, spec.in_chans, -1, -1) if c == 1 else x.mean(dim=-3, keepdim=True)
    x = (x - _per_channel(spec.mean)) / _per_channel(spec.std)
    return x.squeeze(0) if squeeze else x


def _per_channel(v: float | tuple[float, ...]) -> float | torch.Tensor:
    """A scalar stays a Python float (the zoo path, bit for bit); a tuple broadcasts over (C, 1, 1)."""
    return v if isinstance(v, (int, float)) else torch.tensor(v, dtype=torch.float32).view(-1, 1, 1)


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation on one (C, H, W) tensor: random crop after zero padding, random h-flip."""
    h, w = x.shape[-2:]
    x = F.pad(x, (pad, pad, pad, pad))
    i, j = torch.randint(0, 2 * pad + 1, (2,), generator=generator).tolist()
    x = x[..., i : i + h, j : j + w]
    if torch.rand((), generator=generator) < 0.5:
        x = x.flip(-1)
    return x


class FashionMNIST(Dataset):
    """Fashion-MNIST held in memory as uint8 and transformed to the model's input per item.

    Without ``transform`` the item is the zoo's exact-pad path (:func:`fit_to_model` with ``spec``, and
    :func:`random_crop_flip` when ``augment``). With ``transform`` (a callable on a PIL ``"L"`` image,
    e.g. a model's own preprocessing from :mod:`vitcompress.data.preprocess`) that path is replaced;
    a transform with a ``generator`` attribute shares it as the dataset's augmentation generator.
    """

    classes = FMNIST_CLASSES
    root_name = "Fashion-MNIST"

    def __init__(
        self,
        root: Path,
        split: str,
        spec: InputSpec | None,
        augment: bool = False,
        seed: int = 0,
        transform: Callable | None = None,
    ):
        if split not in FMNIST_FILES:
            raise DataError(f"split must be one of {sorted(FMNIST_FILES)}, got {split!r}")
        if spec is None and transform is None:
            raise DataError("FashionMNIST needs an InputSpec or a transform")
        images, labels = (_find_idx(root, name) for name in FMNIST_FILES[split])
        self.images = torch.from_numpy(_pixels(read_idx(images), images))  # (N, H, W) uint8
        self.targets = torch.from_numpy(_labels(read_idx(labels), labels, len(self.classes)))
        if self.images.dim() != 3 or len(self.images) != len(self.targets):
            raise DataError(
                f"{images} and {labels} disagree: {tuple(self.images.shape)} images, {len(self.targets)} labels"
            )
        self.spec, self.augment, self.transform = spec, augment, transform
        self.generator = getattr(transform, "generator", None) or torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.transform is not None:
            from PIL import Image

            return self.transform(Image.fromarray(self.images[i].numpy(), "L")), int(self.targets[i])
        x = self.images[i].unsqueeze(0).float().div_(255.0)  # (1, 28, 28)
        if self.augment:
            x = random_crop_flip(x, pad=2, generator=self.generator)
        return fit_to_model(x, self.spec), int(self.targets[i])


def _whole_in_range(a: np.ndarray, low: int, high: int) -> np.ndarray:
    """Mask of the values of ``a`` that are not whole numbers in ``[low, high]`` (NaN and Inf included)."""
    if a.dtype.kind in "ui":
        return (a < low) | (a > high)
    with np.errstate(invalid="ignore"):
        return ~(np.isfinite(a) & (a >= low) & (a <= high) & (a == np.round(a)))


def _pixels(a: np.ndarray, path: Path) -> np.ndarray:
    """An idx image array as uint8; DataError naming the file when a value is not an 8-bit grey level
    (a float file scaled to [0, 1] or to [0, 65535], NaN or Inf)."""
    if a.dtype == np.uint8:
        return a.copy()
    bad = _whole_in_range(a, 0, 255)
    if bad.any():
        first = a[bad].flat[0].item()
        raise DataError(
            f"{path}: pixel values must be whole numbers in 0..255 (8-bit grey levels); {int(bad.sum())} are not, "
            f"e.g. {first!r} (image {int(np.argwhere(bad)[0][0])})"
        )
    return a.astype(np.uint8)


def _labels(a: np.ndarray, path: Path, classes: int) -> np.ndarray:
    """An idx label array as int64; DataError naming the file when a label is not a class index."""
    if a.ndim != 1:
        raise DataError(f"{path}: labels must be one dimension (one per image), got shape {a.shape}")
    bad = _whole_in_range(a, 0, classes - 1)
    if bad.any():
        raise DataError(
            f"{path}: labels must be class indices 0..{classes - 1}; {int(bad.sum())} are not, "
            f"e.g. {a[bad].flat[0].item()!r} (image {int(np.argwhere(bad)[0][0])})"
        )
    return a.astype(np.int64)


def _find_idx(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}: install it with "
        "`apt-get install -y dataset-fashion-mnist` or pass --data-root DIR holding the four idx files"
    )


def _imagefolder(root: Path, spec: InputSpec) -> Dataset:
    from vitcompress.data.folder import ImageFolderData
    from vitcompress.data.preprocess import FitTransform

    if not root.is_dir():
        raise DataError(f"ImageFolder root {root} is not a directory")
    return ImageFolderData(root, FitTransform(spec))


def load_dataset(
    spec: InputSpec,
    split: str = "test",
    data_root: str | Path | None = None,
    name: str = "fashion-mnist",
    augment: bool = False,
    seed: int = 0,
) -> Dataset:
    """Load a dataset transformed for a model with input ``spec``.

    Args:
        spec: the model's input size, channels and normalisation.
        split: ``"train"`` or ``"test"`` (Fashion-MNIST); for ``imagefolder`` a sub-folder name, if present.
        data_root: folder with the idx files (default: Debian's dataset-fashion-mnist location) or the
            ImageFolder root.
        name: ``"fashion-mnist"`` or ``"imagefolder"``.
        augment: random crop + flip (training only).
        seed: seed of the augmentation stream.
    """
    if name == "fashion-mnist":
        root = Path(data_root) if data_root else DEFAULT_FMNIST_ROOT
        return FashionMNIST(root, split, spec, augment=augment, seed=seed)
    if name == "imagefolder":
        if data_root is None:
            raise DataError("dataset 'imagefolder' needs --data-root DIR")
        root = Path(data_root)
        return _imagefolder(root / split if (root / split).is_dir() else root, spec)
    raise DataError(f"dataset must be one of ['fashion-mnist', 'imagefolder'], got {name!r}")


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """Labels of a dataset without loading images (FashionMNIST, ImageFolder, Subset of either)."""
    if isinstance(dataset, Subset):
        return dataset_targets(dataset.dataset)[torch.as_tensor(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise DataError(f"cannot read labels of {type(dataset).__name__} without loading every image")
    return torch.as_tensor(targets)


def calibration_subset(dataset: Dataset, n: int, seed: int = 0, balanced: bool = False) -> Subset:
    """A seeded random subset of ``n`` images, optionally with classes as equal as possible.

    The same (dataset, n, seed, balanced) always gives the same indices.
    """
    total = len(dataset)
    if n <= 0:
        raise DataError(f"calibration size must be >= 1, got {n}")
    if n > total:
        raise DataError(f"calibration size {n} exceeds the dataset size {total}")
    g = torch.Generator().manual_seed(seed)
    if not balanced:
        return Subset(dataset, torch.randperm(total, generator=g)[:n].tolist())
    targets = dataset_targets(dataset)
    classes = targets.unique().tolist()
    per_class = [torch.nonzero(targets == c).flatten() for c in classes]
    per_class = [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]
    chosen: list[int] = []
    rank = 0
    while len(chosen) < n:  # round-robin over classes keeps counts within one of each other
        for idx in per_class:
            if rank < len(idx) and len(chosen) < n:
                chosen.append(int(idx[rank]))
        rank += 1
    return Subset(dataset, sorted(chosen))


def base_dataset(dataset: Dataset) -> Dataset:
    """The dataset under any number of ``Subset`` wrappers."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def loader_workers(dataset: Dataset) -> int:
    """The decoding workers a dataset asks for (its ``loader_workers``; 0 for in-memory data)."""
    return int(getattr(base_dataset(dataset), "loader_workers", 0) or 0)


def _seed_worker(_: int) -> None:
    """Give each worker's copy of an augmentation generator its own seeded stream (from the loader's seed)."""
    info = get_worker_info()
    g = getattr(base_dataset(info.dataset), "generator", None)
    if isinstance(g, torch.Generator):
        g.manual_seed(info.seed)


def _worker_message(message: str) -> str:
    """The original one-line message of an error re-raised from a DataLoader worker (which adds a traceback)."""
    if not message.startswith("Caught "):
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split(": ", 1)[1] if ": " in last else last


class Loader(DataLoader):
    """A DataLoader whose worker errors keep their one-line message (DataLoader adds the worker's traceback),
    and whose workers stop as soon as the iteration ends, fails or is left (an iterator kept alive by a
    traceback would otherwise stop them only when collected, after a 5-second join timeout per worker)."""

    def __iter__(self):
        it = super().__iter__()
        try:
            yield from it
        except DataError as e:
            raise DataError(_worker_message(str(e))) from None
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)  # multi-process iterators only
            if shutdown is not None:
                shutdown()


def make_loader(
    dataset: Dataset,
    batch_size: int = 256,
    shuffle: bool = False,
    seed: int = 0,
    collate_fn: Callable | None = None,
    workers: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A deterministic DataLoader.

    Args:
        workers: decoding processes; None = what the dataset asks for (an image folder from
            :class:`~vitcompress.data.source.DataSource`: its ``workers``; in-memory data such as
            Fashion-MNIST: 0). The batches, and their order, do not depend on it.
        pin_memory: batches in page-locked memory (for a CUDA model: the copy to the GPU then overlaps).
    """
    n = loader_workers(dataset) if workers is None else workers
    integer("workers", n, minimum=0)
    g = torch.Generator().manual_seed(seed)
    return Loader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=n,
        collate_fn=collate_fn,
        worker_init_fn=_seed_worker if n else None,
        pin_memory=pin_memory,
    )


def data_classes(dataset: Dataset) -> int | None:
    """How many classes a dataset has (its ``classes``), None when it does not say."""
    classes = getattr(base_dataset(dataset), "classes", None)
    return len(classes) if classes is not None else None


def model_classes(model: nn.Module) -> int | None:
    """A classifier's output classes: timm's ``num_classes``, or a Hugging Face ``config.num_labels``."""
    for n in (getattr(model, "num_classes", None), getattr(getattr(model, "config", None), "num_labels", None)):
        if isinstance(n, int) and not isinstance(n, bool) and n > 0:
            return n
    return None


def check_classes(dataset: Dataset, model: nn.Module) -> None:
    """Raise a one-line DataError when the data has more classes than the model predicts.

    Fewer classes is allowed (evaluating on a subset of the model's classes); unknown counts pass.
    """
    n, m = data_classes(dataset), model_classes(model)
    if n is not None and m is not None and n > m:
        base = base_dataset(dataset)
        where = getattr(base, "root_name", None) or str(getattr(base, "root", type(base).__name__))
        raise DataError(
            f"{where} has {n} classes but the model has num_classes={m}: load a model with --num-classes {n} "
            f"(and weights trained on those {n} classes)"
        )


def check_labels(labels: torch.Tensor, num_classes: int | None, where: str) -> None:
    """Raise a one-line DataError when ``labels`` are not class indices ``0 .. num_classes - 1``.

    ``where`` names the batch or file; ``num_classes`` None checks only that labels are whole and >= 0.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{where}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bad = low if low < 0 else high
        allowed = f"0..{num_classes - 1} (the model has {num_classes} classes)" if num_classes else "0 or more"
        raise DataError(f"{where}: label {bad} is outside the class range {allowed}")
