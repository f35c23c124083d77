"""Calibration data: any Dataset, DataLoader or iterable of batches, checked and batched."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vitcompress.data.datasets import make_loader
from vitcompress.errors import DataError


def iter_images(calib: Dataset | DataLoader | Iterable, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Yield image batches from ``calib`` (a Dataset of (image, label), a loader, or tensors/pairs).

    Raises:
        DataError: the data is empty, or a batch holds NaN/Inf (naming the batch).
    """
    batches = make_loader(calib, batch_size) if isinstance(calib, Dataset) else calib
    seen = 0
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise DataError(f"calibration batch {i} is a {type(x).__name__}, expected a tensor of images")
        if not torch.isfinite(x).all():
            raise DataError(f"calibration data batch {i} contains NaN or Inf values")
        seen += len(x)
        yield x
    if seen == 0:
        raise DataError("calibration data is empty: pass at least one image")


def cache_batches(calib: Dataset | DataLoader | Iterable, batch_size: int = 64) -> list[torch.Tensor]:
    """All calibration batches as a list (small calibration sets are reused by searches)."""
    return list(iter_images(calib, batch_size))
