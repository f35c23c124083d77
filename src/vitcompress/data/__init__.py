"""Datasets: Fashion-MNIST from Debian's package (or any folder with the idx files), ImageFolder,
transforms that fit a model's input, and seeded calibration subsets."""

from vitcompress.data.datasets import (
    DEFAULT_FMNIST_ROOT,
    InputSpec,
    calibration_subset,
    load_dataset,
    make_loader,
)

__all__ = ["DEFAULT_FMNIST_ROOT", "InputSpec", "calibration_subset", "load_dataset", "make_loader"]
