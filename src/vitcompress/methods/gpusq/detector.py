"""GPUSQ-ViT on a detector: N:M sparsity on the transformer's GEMMs, distillation on the backbone's features.

GPUSQ-ViT (Yu, Chen, Gan, Fan, CVPR 2023, arXiv:2305.10727) prunes and quantizes the transformer and trains
it with ``α·L_hard + β·L_soft + γ·L_feature`` against a teacher. On a detector the sparse layers are the
transformer's (``backbone.body``: attention qkv/proj, MLP fc1/fc2, patch embedding) and both stages train with
the feature term alone, on the backbone: the MSE between teacher and student at the patch embedding, the
last block of every stage and the feature pyramid (its levels averaged), weighted as in Algorithm 1 (stage 1
``(1, θ_1..θ_K, 1)``, stage 2 the measured ``W_j``). Why not the detection losses: the hard/soft terms need
class logits, which a detector only has per sampled RoI (proposals differ between teacher and student, so
their logits do not pair up); the detection losses need the targets and a full detector forward (the RoI
heads hold ~88 % of the MACs), are noisy (sampled RoIs), and train the heads, which sparsity does not touch.
The pyramid is what every head reads, so matching it to the dense teacher keeps the heads' input, label-free
and at the cost of a backbone forward. The heads keep their float (stage 1) and PTQ (stage 2) weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vitcompress.sparsity import DEFAULT_LAYERS
from vitcompress.train.detector_distill import (  # noqa: F401  (GPUSQ's detector API: re-exported)
    BODY,
    PYRAMID,
    BackboneDistillLoss,
    SceneImages,
    backbone_points,
    check_one_process,
)
from vitcompress.train.distill import DistillConfig, normalized_factors


def detector_layers() -> list[str]:
    """The layer globs GPUSQ sparsifies in a detector: its transformer's GEMMs."""
    return [f"{BODY}.{p}" for p in DEFAULT_LAYERS]


@torch.no_grad()
def detector_weight_factors(
    teacher: nn.Module, student: nn.Module, batches: Iterable[torch.Tensor], config: DistillConfig
) -> list[float]:
    """Stage-2 weights ``W_j = w_j·MSE_j / Σ w·MSE`` (Algorithm 1 line 22) over the backbone's points and the
    pyramid, measured between the dense and the sparse detector; ``1/(K+2)`` each when switched off."""
    loss = BackboneDistillLoss(teacher, student, config)
    was_training = student.training
    student.eval()
    try:
        if not config.weight_factors:
            return [1.0 / len(loss.weights)] * len(loss.weights)
        totals = torch.zeros(len(loss.weights), dtype=torch.float64)
        for x in batches:
            totals += torch.tensor([float(t) for t in loss.terms(student, x)], dtype=torch.float64)
    finally:
        loss.close()
        student.train(was_training)
    return normalized_factors(totals, loss.weights)
