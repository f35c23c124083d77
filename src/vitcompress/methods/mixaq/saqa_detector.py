"""SAQA on a Swin detector: backbone distillation from the float detector, the transformer trained alone.

MixA-Q (2025) adapts its two-branch Swin with SAQA, one sampled ratio vector per step; on a classifier
:func:`~vitcompress.methods.mixaq.saqa_` trains the whole model with the classification loss (or a KL to a
teacher's logits). On a detector :func:`~vitcompress.methods.mixaq.saqa_` trains with the feature term GPUSQ-ViT
uses on detectors (:class:`~vitcompress.train.detector_distill.BackboneDistillLoss`: the MSE between the float
detector's and the student's backbone at the patch embedding, the last block of every stage and the feature
pyramid, its levels averaged; weights 1 each), label-free, at the ratio vector the uniform-sum sampler draws
for the step, on the images of the train scenes.

Why not the detection losses: the class logits exist only per sampled RoI, and the teacher's and the student's
proposals differ, so no logit distillation pairs up; the RPN and RoI losses need the targets, a whole detector
forward (the RoI heads hold ~88 % of the default detector's MACs) and are noisy (sampled anchors and RoIs);
and MixA-Q changes only the transformer's activations (the windows' bits), never the heads. The pyramid is
what every head reads: matching it to the float detector's at every sampled ratio vector keeps the heads'
input, at the cost of two backbone forwards per step.

What trains: only the transformer (``backbone.body``), its shared weights, both branches' LayerNorms and LSQ
scales. The classifier's SAQA trains everything because its loss is the network's output; here the loss ends
at the pyramid, so the RPN and RoI heads get no gradient anyway, and the pyramid's own layers (8-bit, the same
at every ratio) are frozen too: they would otherwise learn to absorb the low windows' error on a label-free
target and drift from the input the heads were trained on. The detector outside the body keeps its PTQ
weights and scales; the parameters' ``requires_grad`` flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.utils.data import Dataset

from vitcompress.errors import ConfigError
from vitcompress.train.detector_distill import BODY, BackboneDistillLoss, SceneImages, check_one_process
from vitcompress.train.distill import DistillConfig

DISTILL = DistillConfig(gamma=1.0)  # the loss is the weighted sum of the MSEs (weights 1: patch, stages, pyramid)


def check_detector_saqa(teacher: nn.Module | None) -> None:
    """SAQA on a detector needs the float teacher and one process.

    Raises:
        ConfigError: no teacher; UnsupportedModelError: more than one process (under ``torchrun``).
    """
    if teacher is None:
        raise ConfigError(
            "teacher: SAQA on a detector distils the backbone from the float detector; pass teacher= (a float copy "
            "taken before mixaq_, as compress_ does)"
        )
    check_one_process("SAQA")


def backbone_loss(teacher: nn.Module, student: nn.Module) -> BackboneDistillLoss:
    """The backbone distillation of ``student`` against ``teacher`` (call ``close()`` when done)."""
    return BackboneDistillLoss(teacher, student, DISTILL)


def scene_images(scenes: Dataset) -> Dataset:
    """The trainer's ``(image, 0)`` items from a scene dataset's ``(image, target)`` (the loss needs no target)."""
    return SceneImages(scenes)


@contextlib.contextmanager
def body_only(model: nn.Module) -> Iterator[list[str]]:
    """Freeze every parameter of ``model`` outside ``backbone.body`` for the block; yields the trained names.

    Raises:
        ConfigError: ``backbone.body`` has no trainable parameter.
    """
    prefix = BODY + "."
    saved = {n: p.requires_grad for n, p in model.named_parameters()}
    trained = [n for n, was in saved.items() if was and n.startswith(prefix)]
    if not trained:
        raise ConfigError(f"SAQA on a detector trains {BODY}, which has no trainable parameter")
    try:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n] and n.startswith(prefix))
        yield trained
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(saved[n])
