"""``DataSource``: the images a command calibrates, trains and evaluates on, named the same way everywhere."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from vitcompress.data.datasets import DEFAULT_FMNIST_ROOT, FashionMNIST, check_classes
from vitcompress.data.folder import ImageFolderData, find_classes
from vitcompress.data.preprocess import INTERPOLATIONS, Preprocess, resolve_preprocess
from vitcompress.errors import ConfigError, DataError
from vitcompress.options import option
from vitcompress.validate import integer, number, one_of, positive, positive_int

FASHION_MNIST, IMAGEFOLDER = "fashion-mnist", "imagefolder:"


def default_workers() -> int:
    """Decoding workers by default: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


def _floats(value: float | tuple[float, ...] | None) -> tuple[float, ...] | None:
    return (value,) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class DataSource:
    """Where the images come from and how they become the model's input.

    Preprocessing defaults to the model's own (timm's data config; a Hugging Face model's image processor;
    the zoo models' Fashion-MNIST exact-pad path), see :mod:`vitcompress.data.preprocess`.

    Attributes:
        data: fashion-mnist (the embedded demo), or imagefolder:DIR with DIR/train (calibration and training
            images) and DIR/val (evaluation images), one sub-folder per class
        calib_data: folder of calibration/training images, one sub-folder per class (instead of DIR/train)
        eval_data: folder of evaluation images, one sub-folder per class (instead of DIR/val)
        input_size: image size fed to the model: one value (square) or two (height width) (default: the model's)
        mean: normalisation mean, one value or one per channel (default: the model's)
        std: normalisation standard deviation, one value or one per channel (default: the model's)
        crop_pct: images are resized to input size / crop_pct, then centre-cropped; 1 = no crop
            (default: the model's)
        interpolation: resize interpolation (default: the model's)
        workers: DataLoader processes decoding image folders; 0 decodes in the main process
    """

    data: str = FASHION_MNIST
    calib_data: str | None = option(None, metavar="DIR")
    eval_data: str | None = option(None, metavar="DIR")
    input_size: tuple[int, ...] | None = option(None, metavar="N")
    mean: tuple[float, ...] | None = option(None, metavar="M")
    std: tuple[float, ...] | None = option(None, metavar="S")
    crop_pct: float | None = None
    interpolation: str | None = option(None, choices=INTERPOLATIONS)
    workers: int = default_workers()

    def __post_init__(self) -> None:
        folder = isinstance(self.data, str) and self.data.startswith(IMAGEFOLDER) and len(self.data) > len(IMAGEFOLDER)
        if self.data != FASHION_MNIST and not folder:
            raise ConfigError(f"data must be '{FASHION_MNIST}' or '{IMAGEFOLDER}DIR', got {self.data!r}")
        for name in ("calib_data", "eval_data"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
                raise ConfigError(f"{name} must be a folder, got {value!r}")
        self._check_numbers()

    def _check_numbers(self) -> None:
        size = (self.input_size,) if isinstance(self.input_size, int) else self.input_size
        if size is not None:
            if not 1 <= len(size) <= 2:
                raise ConfigError(f"input_size takes one value (square) or two (height width), got {size!r}")
            for v in size:
                positive_int("input_size", v)
        object.__setattr__(self, "input_size", None if size is None else tuple(size))
        for name, check in (("mean", number), ("std", positive)):
            values = _floats(getattr(self, name))
            if values is not None and not values:
                raise ConfigError(f"{name} takes one value or one per channel, got none")
            for v in values or ():
                check(name, v)
            object.__setattr__(self, name, None if values is None else tuple(values))
        number("crop_pct", self.crop_pct, low=0, high=1, low_open=True, optional=True)
        if self.interpolation is not None:
            one_of("interpolation", self.interpolation, INTERPOLATIONS)
        integer("workers", self.workers, minimum=0)

    # -- folders -----------------------------------------------------------------------------------

    @property
    def root(self) -> Path | None:
        """DIR of ``imagefolder:DIR``, else None."""
        return Path(self.data[len(IMAGEFOLDER) :]) if self.data.startswith(IMAGEFOLDER) else None

    def _split(self, named: str | None, split: str, flag: str, what: str) -> Path | None:
        if named is not None:
            if not Path(named).is_dir():
                raise DataError(f"{flag} {named}: no such folder")
            return Path(named)
        root = self.root
        if root is None:
            return None
        if not root.is_dir():
            raise DataError(f"--data {self.data}: no such folder {root}")
        if not (root / split).is_dir():
            raise DataError(
                f"{root / split} not found: --data {IMAGEFOLDER}DIR takes the {what} images from DIR/{split}/<class>/;"
                f" or name their folder with {flag} DIR"
            )
        return root / split

    def calib_folder(self) -> Path | None:
        """The folder of calibration/training images (None: Fashion-MNIST).

        Raises:
            DataError: the folder is missing (saying which flag names it).
        """
        return self._split(self.calib_data, "train", "--calib-data", "calibration/training")

    def eval_folder(self) -> Path | None:
        """The folder of evaluation images (None: Fashion-MNIST).

        Raises:
            DataError: the folder is missing (saying which flag names it).
        """
        return self._split(self.eval_data, "val", "--eval-data", "evaluation")

    # -- datasets ----------------------------------------------------------------------------------

    def preprocess(self, model: nn.Module) -> Preprocess:
        """The model's preprocessing with this source's overrides."""
        return resolve_preprocess(
            model,
            input_size=self.input_size,
            mean=self.mean,
            std=self.std,
            crop_pct=self.crop_pct,
            interpolation=self.interpolation,
        )

    def train_set(
        self, model: nn.Module, data_root: str | Path | None = None, *, augment: bool = False, seed: int = 0
    ) -> Dataset:
        """Calibration / training images, preprocessed for ``model`` (``augment``: seeded training augmentation).

        Raises:
            DataError: a missing or malformed folder, or more classes than the model has.
        """
        pre = self.preprocess(model)
        transform = pre.train_transform(torch.Generator().manual_seed(seed)) if augment else pre.eval_transform()
        folder = self.calib_folder()
        if folder is None:
            self._not_mixed(self.eval_data, "--eval-data", "evaluation", "--calib-data", "calibration")
            ds = _fashion_mnist(pre, "train", data_root, augment, seed, transform)
        else:
            ds = ImageFolderData(folder, transform, workers=self.workers)
        check_classes(ds, model)
        return ds

    def eval_set(self, model: nn.Module, data_root: str | Path | None = None) -> Dataset:
        """Evaluation images, preprocessed for ``model``.

        An evaluation folder takes its labels from the calibration folder's classes when that exists, so
        a class missing from it does not shift the others.

        Raises:
            DataError: a missing or malformed folder, or more classes than the model has.
        """
        pre = self.preprocess(model)
        folder = self.eval_folder()
        if folder is None:
            self._not_mixed(self.calib_data, "--calib-data", "calibration", "--eval-data", "evaluation")
            ds = _fashion_mnist(pre, "test", data_root, False, 0, pre.eval_transform())
        else:
            ds = ImageFolderData(folder, pre.eval_transform(), classes=self._calib_classes(), workers=self.workers)
        check_classes(ds, model)
        return ds

    def _calib_classes(self) -> list[str] | None:
        try:
            folder = self.calib_folder()
            return find_classes(folder) if folder is not None else None
        except DataError:  # train_set reports it; evaluation alone does not need the calibration folder
            return None

    def _not_mixed(self, given: str | None, flag: str, what: str, other_flag: str, other: str) -> None:
        if given is not None:
            raise ConfigError(
                f"{flag} names the {what} images, so the {other} images must come from a folder too: pass "
                f"{other_flag} DIR (or --data {IMAGEFOLDER}DIR), not Fashion-MNIST"
            )


def _fashion_mnist(
    pre: Preprocess, split: str, data_root: str | Path | None, augment: bool, seed: int, transform
) -> Dataset:
    """Fashion-MNIST: the exact-pad path for the zoo models, the model's own preprocessing for others."""
    root = Path(data_root) if data_root else DEFAULT_FMNIST_ROOT
    if pre.exact_pad:
        return FashionMNIST(root, split, pre.input_spec(), augment=augment, seed=seed)
    return FashionMNIST(root, split, None, augment=augment, seed=seed, transform=transform)
