"""``paired_bootstrap``: how much of a difference in COCO mAP between two detectors is the val set's noise.

A compressed detector is scored on the same images as its float model, so the question is the noise of the
*difference*, image by image, not of each mAP alone: the two share the hard images. The bootstrap (Efron and
Tibshirani, 1993, "An Introduction to the Bootstrap") draws the val images with replacement, the same draw for
both detectors, and recomputes both mAPs on each draw; the spread of the differences is the paired noise, the
spread of each mAP its unpaired noise.

Each draw reuses pycocotools' per-image matching (``COCOeval.evaluate``, run once per detector): a draw only
re-indexes the per-image results and re-runs ``accumulate``, so that the mAP of a draw is exactly COCO's mAP of
the val set with those images (an image drawn twice counts twice, its objects and detections both).
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from tqdm.auto import tqdm

from vitcompress.errors import DataError
from vitcompress.eval.detection import IOU_TYPES, _coco, _pycocotools, _result_annotations
from vitcompress.validate import one_of, positive_int

MAX_DETS = 100  # COCO's mAP: at most 100 detections per image


@dataclass(frozen=True)
class PairedNoise:
    """The difference ``b - a`` of two detectors' mAP (0-100) on one image set, with its bootstrap noise.

    Attributes:
        map_a, map_b: each detector's mAP on the images (COCO's).
        delta: ``map_b - map_a``.
        se_delta: standard deviation of the difference over the draws (the paired noise).
        ci_low, ci_high: the 2.5 and 97.5 percentiles of the difference over the draws.
        se_a, se_b: standard deviation of each mAP over the same draws (the unpaired noise).
        resamples: number of draws; images: images per draw.
    """

    map_a: float
    map_b: float
    delta: float
    se_delta: float
    ci_low: float
    ci_high: float
    se_a: float
    se_b: float
    resamples: int
    images: int

    def as_dict(self) -> dict:
        return asdict(self)


class _Matched:
    """One detector's per-image COCO matching, re-accumulated on any multiset of its images."""

    def __init__(self, ground_truth: dict, detections: Sequence[dict], iou_type: str, image_ids: Sequence[int]):
        _, COCOeval, _ = _pycocotools()
        gt = _coco({**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]})
        results = {k: ground_truth[k] for k in ("images", "categories")}
        dt = _coco({**results, "annotations": _result_annotations(detections, iou_type)})
        self.ev = COCOeval(gt, dt, iou_type)
        self.ev.params.imgIds = [int(i) for i in image_ids]  # this order: draws index into it
        with contextlib.redirect_stdout(io.StringIO()):
            self.ev.evaluate()
        pe = self.ev._paramsEval
        self.n_images, self.n_areas, self.n_cats = len(pe.imgIds), len(pe.areaRng), len(pe.catIds)
        self.per_image = self.ev.evalImgs  # (category, area range, image) order, area range 0 = all
        all_area = copy.deepcopy(pe)  # accumulate over area "all" and 100 detections only
        all_area.areaRng, all_area.areaRngLbl, all_area.maxDets = pe.areaRng[:1], pe.areaRngLbl[:1], [MAX_DETS]
        self.params = all_area

    def map(self, positions: np.ndarray) -> float:
        """COCO mAP (0-100) of the images at ``positions`` (indices into ``image_ids``; repeats count twice)."""
        n, stride = len(positions), self.n_areas * self.n_images
        self.ev.evalImgs = [self.per_image[k * stride + int(i)] for k in range(self.n_cats) for i in positions]
        params = copy.copy(self.params)
        params.imgIds = list(range(n))  # placeholder ids: accumulate only counts them
        self.ev._paramsEval = params
        with contextlib.redirect_stdout(io.StringIO()):
            self.ev.accumulate(params)
        precision = self.ev.eval["precision"]
        valid = precision[precision > -1]
        return 100.0 * float(valid.mean()) if valid.size else float("nan")


def paired_bootstrap(
    ground_truth: dict,
    detections_a: Sequence[dict],
    detections_b: Sequence[dict],
    image_ids: Sequence[int],
    iou_type: str = "bbox",
    resamples: int = 500,
    seed: int = 0,
) -> PairedNoise:
    """Bootstrap the difference of two detectors' COCO mAP over the images (the same draws for both).

    Args:
        ground_truth: the COCO instances dict of the images.
        detections_a, detections_b: the two detectors' COCO results (:func:`~vitcompress.eval.detection.detect`).
        image_ids: the images both were run on.
        iou_type: ``bbox`` or ``segm``.
        resamples: bootstrap draws (>= 1).
        seed: seeds the draws.

    Raises:
        ConfigError: bad ``iou_type`` or ``resamples``. DataError: no images.
    """
    one_of("iou_type", iou_type, IOU_TYPES)
    positive_int("resamples", resamples)
    if not len(image_ids):
        raise DataError("paired_bootstrap: no images")
    a = _Matched(ground_truth, detections_a, iou_type, image_ids)
    b = _Matched(ground_truth, detections_b, iou_type, image_ids)
    everything = np.arange(len(image_ids))
    map_a, map_b = a.map(everything), b.map(everything)
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, 2))
    for r in tqdm(range(resamples), desc="bootstrap", leave=False, mininterval=1.0):
        positions = rng.integers(0, len(image_ids), len(image_ids))
        draws[r] = a.map(positions), b.map(positions)
    diff = draws[:, 1] - draws[:, 0]
    low, high = np.percentile(diff, [2.5, 97.5])
    return PairedNoise(
        map_a=map_a,
        map_b=map_b,
        delta=map_b - map_a,
        se_delta=float(diff.std(ddof=1)) if resamples > 1 else 0.0,
        ci_low=float(low),
        ci_high=float(high),
        se_a=float(draws[:, 0].std(ddof=1)) if resamples > 1 else 0.0,
        se_b=float(draws[:, 1].std(ddof=1)) if resamples > 1 else 0.0,
        resamples=resamples,
        images=len(image_ids),
    )
