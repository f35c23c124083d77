"""``evaluate``: top-1, top-5, loss and throughput of a classifier on a dataset."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vitcompress.data.datasets import check_labels, make_loader
from vitcompress.device import model_device, synchronize, to_device
from vitcompress.errors import DataError
from vitcompress.models.inputs import declared_channels, declared_size
from vitcompress.validate import positive_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metrics:
    """Classification metrics of one evaluation (accuracies in percent)."""

    top1: float
    top5: float
    loss: float
    images: int
    images_per_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_input(model: nn.Module, x: torch.Tensor) -> None:
    """Raise a DataError naming expected vs got when a batch does not fit the model: 4-D, the first
    convolution's channels, and the image size when the model is built for one size only."""
    chans = declared_channels(model)
    declared = declared_size(model)
    if chans is None and declared is None:  # a model that says nothing about its input: nothing to check
        return
    got = tuple(x.shape[1:])
    fixed = (
        declared is not None and declared[2] and getattr(getattr(model, "patch_embed", None), "strict_img_size", True)
    )
    wrong_size = fixed and got[1:] != declared[0]
    if x.dim() != 4 or (chans is not None and got[0] != chans) or wrong_size:
        h, w = declared[0] if declared is not None else ("H", "W")
        raise DataError(f"input does not fit the model: expected (N, {chans or 'C'}, {h}, {w}), got {tuple(x.shape)}")


def _check_batch(model: nn.Module, x: torch.Tensor, i: int, first: int) -> None:
    """The input checks of evaluation batch ``i`` (images ``first`` on): shape (first batch), finite pixels."""
    if i == 0:
        check_input(model, x)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise DataError(
            f"evaluation batch {i} (images {first}..{first + len(x) - 1}) contains NaN or Inf values "
            f"in {bad} image{'s' if bad > 1 else ''}"
        )


def _check_output(logits: torch.Tensor, y: torch.Tensor, i: int, first: int) -> None:
    """The model's output of batch ``i`` is finite and its labels index its classes."""
    where = f"evaluation batch {i} (images {first}..{first + len(y) - 1})"
    if not bool(torch.isfinite(logits).all()):
        raise DataError(
            f"the model's output on {where} holds NaN or Inf although the images are finite: "
            "check the weights and quantizer scales"
        )
    check_labels(y, logits.shape[1], where)


def _batches(loader: Iterable, limit: int | None) -> int | None:
    """How many batches the evaluation reads (the progress bar's total), None when the data does not say."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return None
    size = getattr(loader, "batch_size", None)
    if limit is not None and size:
        n = min(n, math.ceil(limit / size))
    return n


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader | Iterable,
    batch_size: int = 256,
    limit: int | None = None,
    workers: int | None = None,
) -> Metrics:
    """Evaluate ``model`` (put in eval mode) on ``data``, on the model's device; deterministic for a given model
    and data.

    Args:
        data: a Dataset of (image, label), or a DataLoader / any iterable of (images, labels) batches.
        batch_size: images per batch for a Dataset (>= 1).
        limit: evaluate only the first ``limit`` images (>= 1; None: all).
        workers: DataLoader decoding processes for a Dataset (None: the dataset's own, see
            :func:`~vitcompress.data.datasets.make_loader`); the metrics do not depend on it.

    Raises:
        ConfigError: ``batch_size`` or ``limit`` is not a positive integer (named).
        DataError: no images; a batch does not fit the model; a batch holds NaN or Inf pixels; a label is
            outside the model's classes; the model's output holds NaN or Inf (each names the batch). Non-finite
            inputs are an error, not a count: a metric over the finite images only would not be comparable.
    """
    positive_int("batch_size", batch_size)
    positive_int("limit", limit, optional=True)
    model.eval()
    if isinstance(data, Dataset) and limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    device = model_device(model)
    pin = device.type == "cuda"
    loader = make_loader(data, batch_size, workers=workers, pin_memory=pin) if isinstance(data, Dataset) else data
    correct1 = correct5 = seen = 0
    loss_sum, seconds = 0.0, 0.0
    bar = tqdm(loader, desc="eval", leave=False, mininterval=1.0, total=_batches(loader, limit))
    for i, (x, y) in enumerate(bar):
        if limit is not None and seen >= limit:
            break
        if limit is not None:
            x, y = x[: limit - seen], y[: limit - seen]
        x, y = to_device((x, y), device)
        _check_batch(model, x, i, seen)
        t0 = time.perf_counter()
        logits = model(x)
        synchronize(device)
        seconds += time.perf_counter() - t0
        _check_output(logits, y, i, seen)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        seen += len(y)
    if seen == 0:
        raise DataError("evaluation data is empty")
    return Metrics(
        top1=100.0 * correct1 / seen,
        top5=100.0 * correct5 / seen,
        loss=loss_sum / seen,
        images=seen,
        images_per_s=seen / max(seconds, 1e-9),
    )
