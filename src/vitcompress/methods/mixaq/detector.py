"""MixA-Q on a Swin detector: candidates scored by COCO box mAP on held-out train scenes, costed on the backbone.

MixA-Q (2025) chooses, per Swin block, the share of windows whose activations run at low bits; its paper
reports COCO detection with a Swin backbone. On a detector the candidates of the ratio search are scored by
box AP (:func:`~vitcompress.eval.detection.evaluate_detection`, boxes only: the mask head is not scored, which
keeps each candidate one detector forward per scene) on held-out train scenes, and costed by the BOPs of the
transformer (``backbone.body``) alone: the RoI heads hold most of a detector's MACs (~88 % of the default Swin
Mask R-CNN's at 224 px, see docs/detection.md) and no window choice changes them, so a relative-BOPs budget
such as ``choose`` 0.8 can only be read on the backbone. The whole detector's BOPs are reported beside it.
SAQA, when configured, runs before the search on the train scenes' images, distilling the backbone from the
float detector (:mod:`~vitcompress.methods.mixaq.saqa_detector`).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.utils.data import Dataset

from vitcompress.cost import CostReport, cost
from vitcompress.eval.detection import evaluate_detection
from vitcompress.eval.task import DETECTION_BATCH
from vitcompress.methods.mixaq.bops import mixed_cost
from vitcompress.methods.mixaq.model import memoized_evaluator
from vitcompress.methods.mixaq.search import EvaluateFn

BACKBONE = "backbone.body."  # the transformer inside a detector: the layers the windows' bits change
SCORE_NAME = "box mAP"


def backbone_bops(report: CostReport) -> int:
    """BOPs of the transformer layers (``backbone.body.*``) of a detector's cost report."""
    return sum(r.bops for r in report.layers if r.name.startswith(BACKBONE))


def detector_evaluator(model: nn.Module, heldout: Dataset) -> EvaluateFn:
    """``ratios -> (box mAP on heldout, backbone BOPs)`` for a two-branch Swin detector (its ratios are left set;
    ratio vectors that select the same windows in every block are evaluated once)."""
    return memoized_evaluator(
        model,
        lambda m: evaluate_detection(m, heldout, batch_size=DETECTION_BATCH, masks=False).bbox_map,
        lambda m: backbone_bops(mixed_cost(m)),
    )


def detector_cost_metrics(model: nn.Module, float_bops: tuple[int, int], ratios: list[float]) -> dict[str, Any]:
    """Backbone BOPs of the float detector, of uniform PTQ (ratio 0) and at ``ratios``, with the reductions, and
    the whole detector's BOPs at the three (``model`` is a two-branch detector; its ratios are restored;
    ``float_bops``: (backbone, whole detector) of the float detector, :func:`float_bops`)."""
    zero = [0.0] * len(ratios)
    ptq, chosen = mixed_cost(model, zero), mixed_cost(model, ratios)
    ptq_bb, chosen_bb = backbone_bops(ptq), backbone_bops(chosen)
    return {
        "fp_backbone_bops": float_bops[0],
        "ptq_backbone_bops": ptq_bb,
        "backbone_bops": chosen_bb,
        "backbone_bops_reduction_vs_ptq": ptq_bb / max(1, chosen_bb),
        "backbone_bops_reduction": float_bops[0] / max(1, chosen_bb),
        "fp_total_bops": float_bops[1],
        "ptq_total_bops": ptq.bops,
        "total_bops": chosen.bops,
        "total_bops_reduction_vs_ptq": ptq.bops / max(1, chosen.bops),
    }


def float_bops(model: nn.Module) -> tuple[int, int]:
    """(backbone, whole detector) BOPs of the float detector (before MixA-Q converts it)."""
    report = cost(model)
    return backbone_bops(report), report.bops


def detector_section(m: dict[str, Any]) -> str:
    """The detector lines of the MixA-Q report: what scored the candidates and the backbone against total BOPs."""
    d = m["detector_cost"]
    return "\n".join(
        [
            "",
            "### On a detector",
            "",
            "Candidates are scored by COCO box mAP (0-100, boxes only) on the held-out train scenes and costed by "
            "the BOPs of the transformer (`backbone.body`); relative BOPs above are the backbone's. The RoI heads "
            "hold most of the detector's MACs and do not change with the ratios.",
            "",
            "| BOPs | float | uniform PTQ (ratio 0) | chosen | reduction vs PTQ |",
            "|---|---:|---:|---:|---:|",
            f"| backbone | {d['fp_backbone_bops']:.4g} | {d['ptq_backbone_bops']:.4g} | {d['backbone_bops']:.4g} | "
            f"{d['backbone_bops_reduction_vs_ptq']:.3f}x |",
            f"| whole detector | {d['fp_total_bops']:.4g} | {d['ptq_total_bops']:.4g} | {d['total_bops']:.4g} | "
            f"{d['total_bops_reduction_vs_ptq']:.3f}x |",
            "",
        ]
    )
