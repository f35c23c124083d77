"""Calibration data: any Dataset, DataLoader or iterable of batches, checked and batched.

This is the one place that turns "calibration data" into image tensors; every method takes its
images through :func:`iter_images` or :func:`first_batches` / :func:`first_images`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from vitcompress.data.datasets import base_dataset, make_loader
from vitcompress.device import to_device
from vitcompress.errors import DataError
from vitcompress.validate import positive_int

log = logging.getLogger(__name__)
CalibData = Dataset | DataLoader | Iterable


def iter_images(
    calib: CalibData, batch_size: int = 64, device: torch.device | str | None = None
) -> Iterator[torch.Tensor]:
    """Yield image batches from ``calib`` (on ``device`` when given: pass the model's).

    ``calib`` is a Dataset of (image, label) or of images (batched by ``batch_size``, decoded by
    the dataset's DataLoader workers, see :func:`~vitcompress.data.datasets.make_loader`), a
    DataLoader, or any iterable of image batches (N, C, H, W), single images (C, H, W), or
    (images, labels) pairs of either.

    Raises:
        DataError: the data is empty, an item is not an image tensor, or a batch holds NaN/Inf (naming the batch).
    """
    if isinstance(calib, Dataset):  # a dataset may batch its own way (detection scenes: lists of images)
        collate = getattr(base_dataset(calib), "collate_fn", None)
        pin = device is not None and torch.device(device).type == "cuda"
        batches = make_loader(calib, batch_size, collate_fn=collate, pin_memory=pin)
    else:
        batches = calib
    seen = 0
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if isinstance(x, (tuple, list)):  # a list of (C, H, W) images, e.g. (images, targets) of a detection batch
            x = _stack_images(x, i)
        if not isinstance(x, torch.Tensor):
            raise DataError(f"calibration batch {i} is a {type(x).__name__}, expected a tensor of images")
        if x.dim() == 3:  # one (C, H, W) image
            x = x.unsqueeze(0)
        if x.dim() != 4:
            raise DataError(
                f"calibration batch {i} has shape {tuple(x.shape)}, expected (N, C, H, W) images or one (C, H, W)"
            )
        if not torch.isfinite(x).all():
            raise DataError(f"calibration data batch {i} contains NaN or Inf values")
        seen += len(x)
        yield x if device is None else to_device(x, device)
    if seen == 0:
        raise DataError("calibration data is empty: pass at least one image")


def _stack_images(images: list | tuple, i: int) -> torch.Tensor | list:
    """A list of (C, H, W) images of one size as an (N, C, H, W) batch (detection scenes are one size)."""
    if not images or not all(isinstance(x, torch.Tensor) and x.dim() == 3 for x in images):
        return list(images)  # not images: the caller names the type
    shapes = sorted({tuple(x.shape) for x in images})
    if len(shapes) > 1:
        raise DataError(
            f"calibration batch {i} holds images of different sizes {shapes[:3]}: calibration batches images of "
            "one size (resize them, or build the scenes at one image_size)"
        )
    return torch.stack(list(images))


def first_batches(
    calib: CalibData,
    n: int | None = None,
    batch_size: int = 64,
    what: str = "n_images",
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """The first ``n`` images of ``calib`` (all of them when ``n`` is None) as a list of batches (on ``device``
    when given).

    A Dataset is batched by ``batch_size``; a loader or iterable keeps its own batches (the last one
    cut at ``n``). Fewer than ``n`` images is logged, not an error: every image is then used.

    Raises:
        ConfigError: ``n`` is not a positive integer (named ``what``).
    """
    positive_int(what, n, optional=True)
    out, seen = [], 0
    for x in iter_images(calib, batch_size, device):
        if n is not None:
            x = x[: n - seen]
        out.append(x)
        seen += len(x)
        if n is not None and seen >= n:
            break
    if n is not None and seen < n:
        log.warning("%s is %d but the calibration data holds %d images; using %d", what, n, seen, seen)
    return out


def first_images(
    calib: CalibData,
    n: int,
    batch_size: int = 64,
    what: str = "n_images",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The first ``n`` images of ``calib`` as one tensor (see :func:`first_batches`)."""
    return torch.cat(first_batches(calib, n, batch_size, what, device))


def example_image(calib: CalibData | None) -> torch.Tensor | None:
    """The first image of ``calib`` as a (1, C, H, W) batch, or None when there is no data or ``calib`` is a
    one-shot iterator (reading it would lose the image for calibration)."""
    if calib is None or isinstance(calib, Iterator):
        return None
    if isinstance(calib, Dataset):
        item = calib[0]
        x = item[0] if isinstance(item, (tuple, list)) else item
        return x.unsqueeze(0) if isinstance(x, torch.Tensor) and x.dim() == 3 else None
    return first_images(calib, 1)


def cache_batches(
    calib: CalibData, batch_size: int = 64, device: torch.device | str | None = None
) -> list[torch.Tensor]:
    """All calibration batches as a list (small calibration sets are reused by searches)."""
    return first_batches(calib, None, batch_size, device=device)


def count_batches(calib: CalibData, batch_size: int = 64, n: int | None = None) -> int | None:
    """How many batches :func:`iter_images` yields from ``calib`` (the first ``n`` images only when given): a
    progress bar's total; None when ``calib`` does not say its length (a one-shot iterator)."""
    try:
        length = len(calib)  # type: ignore[arg-type]
    except TypeError:
        return None
    if isinstance(calib, Dataset):
        images = length if n is None else min(n, length)
        return -(-images // batch_size)
    return length  # a loader or a list of batches: its own batches
