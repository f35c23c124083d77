"""``evaluate_detection``: COCO box (and mask) mAP of a detector with pycocotools, on a 0-100 scale.

The numbers are COCO's (Lin et al., 2014, "Microsoft COCO: Common Objects in Context", arXiv:1405.0312)
as pycocotools computes them: AP averaged over IoU thresholds 0.50:0.05:0.95 (``map``), at IoU 0.50
(``map50``) and 0.75 (``map75``), and over small (< 32^2 pixels), medium and large (> 96^2) objects, with
101-point interpolated precision and at most 100 detections per image. A size range without ground truth
has no AP: its value is None (pycocotools' -1).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from vitcompress.data.datasets import base_dataset, make_loader
from vitcompress.device import model_device, synchronize, to_device
from vitcompress.errors import DataError
from vitcompress.validate import one_of, positive_int

log = logging.getLogger(__name__)

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("map", "map50", "map75", "map_small", "map_medium", "map_large")  # COCOeval.stats[0:6]
MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probability -> binary mask (He et al., 2017, arXiv:1703.06870)


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise ImportError(
            "COCO evaluation needs pycocotools: pip install 'vitcompress[detection]' (or pip install pycocotools)"
        ) from None
    return COCO, COCOeval, mask_utils


@dataclass(frozen=True)
class DetectionMetrics:
    """COCO detection metrics of one evaluation (AP in percent, 0-100; None: no ground truth of that size).

    ``segm_*`` are None when masks were not evaluated.
    """

    bbox_map: float | None
    bbox_map50: float | None
    bbox_map75: float | None
    bbox_map_small: float | None
    bbox_map_medium: float | None
    bbox_map_large: float | None
    images: int
    images_per_s: float
    segm_map: float | None = None
    segm_map50: float | None = None
    segm_map75: float | None = None
    segm_map_small: float | None = None
    segm_map_medium: float | None = None
    segm_map_large: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _coco(dataset: dict):
    """A pycocotools COCO object over an annotation dict (without its progress prints)."""
    COCO, _, _ = _pycocotools()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _result_annotations(detections: Sequence[dict], iou_type: str) -> list[dict]:
    """Detections as COCO result annotations of one IoU type, with the area COCO ranks sizes by."""
    _, _, mask_utils = _pycocotools()
    out = []
    for i, d in enumerate(detections):
        ann = {"id": i + 1, "image_id": d["image_id"], "category_id": d["category_id"], "score": float(d["score"])}
        ann["iscrowd"] = 0
        if iou_type == "bbox":
            x, y, w, h = (float(v) for v in d["bbox"])
            ann.update(bbox=[x, y, w, h], area=w * h)
        else:
            rle = d["segmentation"]
            if isinstance(rle["counts"], list):  # uncompressed RLE -> pycocotools' compressed form
                rle = mask_utils.frPyObjects(rle, *rle["size"])
            ann.update(segmentation=rle, area=float(mask_utils.area(rle)), bbox=mask_utils.toBbox(rle).tolist())
        out.append(ann)
    return out


def coco_metrics(
    ground_truth: dict, detections: Sequence[dict], iou_type: str = "bbox", image_ids: Sequence[int] | None = None
) -> dict[str, float | None]:
    """COCO AP of ``detections`` against ``ground_truth`` (a COCO annotation dict), on a 0-100 scale.

    Args:
        ground_truth: COCO instances dict (``images``, ``annotations``, ``categories``).
        detections: COCO results: dicts with ``image_id``, ``category_id``, ``score`` and ``bbox``
            (``[x, y, w, h]``) or ``segmentation`` (an RLE) for ``iou_type`` ``"segm"``.
        iou_type: ``"bbox"`` or ``"segm"``.
        image_ids: evaluate these images only (default: every image of ``ground_truth``).

    Returns:
        ``{iou_type}_map``, ``_map50``, ``_map75``, ``_map_small``, ``_map_medium``, ``_map_large``.
    """
    one_of("iou_type", iou_type, IOU_TYPES)
    _, COCOeval, _ = _pycocotools()
    # COCOeval writes into the ground-truth annotations (an "ignore" key; masks compressed in place): give it copies
    gt = _coco({**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]})
    results = {k: ground_truth[k] for k in ("images", "categories")}
    dt = _coco({**results, "annotations": _result_annotations(detections, iou_type)})
    ev = COCOeval(gt, dt, iou_type)
    if image_ids is not None:
        ev.params.imgIds = sorted(int(i) for i in image_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {f"{iou_type}_{name}": None if v < 0 else 100.0 * float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def detections_to_coco(output: dict, image_id: int, masks: bool) -> tuple[list[dict], list[dict]]:
    """One image's torchvision detection output as COCO results: (box results, mask results).

    ``output`` holds ``boxes`` (K, 4) ``x1, y1, x2, y2``, ``scores`` (K,), ``labels`` (K,) (COCO category
    ids) and, for masks, ``masks`` (K, 1, H, W) probabilities, binarised at :data:`MASK_THRESHOLD`.
    """
    boxes = output["boxes"].detach().float().cpu()
    boxes[:, 2:] -= boxes[:, :2]  # x1, y1, x2, y2 -> x, y, w, h
    scores, labels = output["scores"].tolist(), output["labels"].tolist()
    box_results = [
        {"image_id": image_id, "category_id": int(c), "score": s, "bbox": b}
        for b, s, c in zip(boxes.tolist(), scores, labels)
    ]
    if not masks:
        return box_results, []
    _, _, mask_utils = _pycocotools()
    binary = (output["masks"].detach().cpu()[:, 0] > MASK_THRESHOLD).numpy().astype(np.uint8)  # (K, H, W)
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    mask_results = [
        {"image_id": image_id, "category_id": int(c), "score": s, "segmentation": r}
        for r, s, c in zip(rles, scores, labels)
    ]
    return box_results, mask_results


def _ground_truth(data: Dataset) -> dict:
    coco = getattr(base_dataset(data), "coco", None)
    if not isinstance(coco, dict):
        raise DataError(
            f"{type(base_dataset(data)).__name__} has no COCO annotations (a `coco` dict): detection evaluation "
            "needs a scene dataset (vitcompress.data.scenes)"
        )
    return coco


def _check_output(output: dict, image_id: int, masks: bool) -> None:
    if not bool(torch.isfinite(output["boxes"]).all()) or not bool(torch.isfinite(output["scores"]).all()):
        raise DataError(
            f"the detector's output on image {image_id} holds NaN or Inf: check the weights and quantizer scales"
        )
    if masks and "masks" not in output:
        raise DataError("masks=True but the detector returns no masks (a box-only detector: pass masks=False)")


@dataclass
class Detections:
    """A detector's COCO results on a dataset: box (and mask) results, the images scored, the forward time."""

    boxes: list[dict]
    masks: list[dict] | None
    image_ids: list[int]
    ground_truth: dict
    seconds: float


@torch.no_grad()
def detect(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 8,
    limit: int | None = None,
    masks: bool | None = None,
    workers: int | None = None,
) -> Detections:
    """Run a torchvision-style detector (put in eval mode) over ``data``; its outputs as COCO results.

    The arguments are :func:`evaluate_detection`'s; :func:`coco_metrics` scores the results, and
    :func:`vitcompress.eval.detection_noise.paired_bootstrap` compares two detectors' results image by image.
    """
    positive_int("batch_size", batch_size)
    positive_int("limit", limit, optional=True)
    ground_truth = _ground_truth(data)
    if masks is None:
        heads = getattr(model, "roi_heads", None)
        masks = bool(heads is not None and heads.has_mask())
    if limit is not None:
        data = Subset(data, range(min(limit, len(data))))
    from vitcompress.data.scenes import collate_detection

    model.eval()
    device = model_device(model)
    loader = make_loader(data, batch_size, collate_fn=collate_detection, workers=workers)
    box_results, mask_results, image_ids, seconds = [], [], [], 0.0
    for images, targets in tqdm(loader, total=len(loader), desc="eval", leave=False, mininterval=1.0):
        images = to_device(images, device)
        t0 = time.perf_counter()
        outputs = model(images)
        synchronize(device)
        seconds += time.perf_counter() - t0
        for output, target in zip(outputs, targets):
            image_id = int(target["image_id"])
            _check_output(output, image_id, masks)
            boxes, segms = detections_to_coco(output, image_id, masks)
            box_results += boxes
            mask_results += segms
            image_ids.append(image_id)
    if not image_ids:
        raise DataError("evaluation data is empty")
    return Detections(box_results, mask_results if masks else None, image_ids, ground_truth, seconds)


def evaluate_detection(
    model: nn.Module,
    data: Dataset,
    batch_size: int = 8,
    limit: int | None = None,
    masks: bool | None = None,
    workers: int | None = None,
) -> DetectionMetrics:
    """Evaluate a torchvision-style detector (put in eval mode) with COCO's AP; deterministic.

    Args:
        model: takes a list of (C, H, W) images (moved to its device), returns one dict per image (``boxes``,
            ``scores``, ``labels`` as COCO category ids, and ``masks`` for instance segmentation).
        data: a dataset of (image, target) with a ``coco`` annotation dict (:class:`SceneDataset`), or a
            ``Subset`` of one; targets carry the ``image_id``.
        batch_size: images per forward (>= 1).
        limit: evaluate only the first ``limit`` images (None: all).
        masks: evaluate masks too (None: when the model has a mask head, ``roi_heads.has_mask()``).
        workers: DataLoader processes (None: the dataset's own).

    Raises:
        ConfigError: ``batch_size`` or ``limit`` is not a positive integer.
        DataError: no images; the data has no COCO annotations; the output holds NaN or Inf.
    """
    return detection_metrics(detect(model, data, batch_size, limit, masks, workers))


def detection_metrics(dets: Detections) -> DetectionMetrics:
    """COCO box (and mask) AP of :func:`detect`'s results."""
    stats = coco_metrics(dets.ground_truth, dets.boxes, "bbox", dets.image_ids)
    if dets.masks is not None:
        stats.update(coco_metrics(dets.ground_truth, dets.masks, "segm", dets.image_ids))
    n = len(dets.image_ids)
    return DetectionMetrics(**stats, images=n, images_per_s=n / max(dets.seconds, 1e-9))
