"""COCO run-length encoding of binary masks (the uncompressed form: a list of run lengths).

COCO's RLE reads the mask column by column (Fortran order) and counts alternating runs of 0s and 1s,
starting with 0s; pycocotools reads this form (``{"size": [h, w], "counts": [...]}``) as it is.
"""

from __future__ import annotations

import numpy as np

from vitcompress.errors import DataError


def encode(mask: np.ndarray) -> dict:
    """The uncompressed COCO RLE of a 2-D boolean/0-1 mask."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # where a run starts, after the first
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]  # COCO's first run counts 0s
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def decode(rle: dict) -> np.ndarray:
    """The (h, w) uint8 mask of an uncompressed COCO RLE."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != h * w or (counts < 0).any():
        raise DataError(f"RLE counts sum to {int(counts.sum())}, the mask has {h * w} pixels")
    values = np.arange(len(counts)) % 2  # runs alternate 0, 1, 0, ...
    return np.repeat(values.astype(np.uint8), counts).reshape((w, h)).T.copy()


def area(rle: dict) -> int:
    """Pixels set in an uncompressed COCO RLE."""
    return int(sum(rle["counts"][1::2]))


def bbox(mask: np.ndarray) -> list[float]:
    """COCO box ``[x, y, width, height]`` (pixel edges) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    return [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)]
