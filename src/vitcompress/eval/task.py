"""What a model is evaluated on and with: top-1 for a classifier, COCO mAP on the scenes for a detector.

The job runner and ``vitcompress eval`` ask here, so that a detector goes through the same commands as a
classifier: :func:`is_detector` decides; :func:`detection_splits` gives the scenes (calibration images from
the train split, evaluation on the val split); :func:`evaluate_model` runs the right evaluation;
:func:`accuracy_metrics` names the numbers of ``metrics.json`` (``fp_top1``/``q_top1``, or
``fp_bbox_map``/``q_bbox_map``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from vitcompress.data.source import DataSource
from vitcompress.errors import ConfigError
from vitcompress.eval.classification import Metrics, evaluate
from vitcompress.eval.detection import DetectionMetrics, evaluate_detection
from vitcompress.models.detection import is_detector

DETECTION_BATCH = 8  # images per detector forward at most: a forward holds every image's proposals at once
DETECTION_KEYS = ("bbox_map", "bbox_map50", "bbox_map75", "segm_map", "segm_map50")  # what metrics.json reports


def detection_splits(
    model: nn.Module, source: DataSource | None = None, data_root: str | Path | None = None, needs_train: bool = False
) -> tuple[Dataset, Dataset, dict[str, Any]]:
    """(train, val, preprocessing) of a detector: the default scenes at its input size, boxes only (calibration
    needs images; evaluation reads the COCO annotations), built into the cache on first use.

    ``needs_train`` is accepted for the callers' symmetry: a method that trains a detector (GPUSQ) trains on the
    same train scenes (see ``jobs.load_data``).

    Raises:
        ConfigError: ``source`` names other images than the default (detectors take the embedded scenes).
    """
    from vitcompress.data.scenes import SceneConfig, load_scenes

    if source is not None and source != DataSource(workers=source.workers):
        raise ConfigError("data: a detector calibrates and evaluates on the embedded scenes; drop the data options")
    config = model.detector_config
    scenes = SceneConfig(image_size=config.image_size)  # the default scenes at 224 px
    train = load_scenes("train", scenes, data_root=data_root, masks=False)
    val = load_scenes("val", scenes, data_root=data_root, masks=False)
    size = (config.in_chans, config.image_size, config.image_size)
    preprocess = {"scenes": scenes.as_dict(), "input_size": list(size), "mean": config.mean, "std": config.std}
    return train, val, preprocess


def evaluate_model(
    model: nn.Module, data: Dataset, batch_size: int | None = None, limit: int | None = None
) -> Metrics | DetectionMetrics:
    """Top-1 of a classifier, or COCO AP of a detector (batches capped at :data:`DETECTION_BATCH`)."""
    if is_detector(model):
        batch_size = min(batch_size or DETECTION_BATCH, DETECTION_BATCH)
        return evaluate_detection(model, data, batch_size=batch_size, limit=limit)
    return evaluate(model, data, limit=limit) if batch_size is None else evaluate(model, data, batch_size, limit)


def accuracy_metrics(fp: Metrics | DetectionMetrics, q: Metrics | DetectionMetrics) -> dict[str, Any]:
    """The accuracy keys of ``metrics.json``: ``fp_``/``q_`` + top1, top5, loss for a classifier, or
    + bbox_map, bbox_map50, bbox_map75 (and segm_map, segm_map50 with masks) for a detector, and
    ``eval_images``."""
    if isinstance(q, DetectionMetrics):
        keys = [k for k in DETECTION_KEYS if getattr(q, k) is not None]
    else:
        keys = ["top1", "top5", "loss"]
    out = {}
    for k in keys:
        out[f"fp_{k}"], out[f"q_{k}"] = getattr(fp, k), getattr(q, k)
    out["eval_images"] = q.images
    return out


def layer_report_inputs(
    reference: nn.Module, model: nn.Module, x: torch.Tensor
) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """What the per-layer report compares: the two models on ``x``; for detectors their backbones (transformer and
    pyramid) on the normalised images, since the heads of the two see different proposals."""
    if not is_detector(model):
        return reference, model, x
    return reference.backbone, model.backbone, model.transform.normalize(x)


def headline(m: dict[str, Any]) -> tuple[str, float, float]:
    """(name, float value, compressed value) of a ``metrics.json``'s main accuracy: top-1, or box mAP."""
    key = "bbox_map" if "q_bbox_map" in m else "top1"
    return ("box mAP" if key == "bbox_map" else "top-1", m[f"fp_{key}"], m[f"q_{key}"])
