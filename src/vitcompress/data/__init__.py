"""Datasets: Fashion-MNIST from Debian's package (or any folder with the idx files), image folders,
the model's own preprocessing, DataLoaders with decoding workers, and seeded calibration subsets."""

from vitcompress.data.datasets import (
    DEFAULT_FMNIST_ROOT,
    InputSpec,
    calibration_subset,
    check_classes,
    load_dataset,
    make_loader,
)
from vitcompress.data.folder import ImageFolderData, verify_images
from vitcompress.data.preprocess import Preprocess, resolve_preprocess
from vitcompress.data.source import DataSource

__all__ = [
    "DEFAULT_FMNIST_ROOT",
    "DataSource",
    "ImageFolderData",
    "InputSpec",
    "Preprocess",
    "calibration_subset",
    "check_classes",
    "load_dataset",
    "make_loader",
    "resolve_preprocess",
    "verify_images",
]
