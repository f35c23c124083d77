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
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitcompress import distributed
from vitcompress.errors import UnsupportedModelError
from vitcompress.sparsity import DEFAULT_LAYERS
from vitcompress.train.distill import DistillConfig, FeatureTaps, feature_points, normalized_factors, stage1_weights

BODY = "backbone.body"
PYRAMID = "pyramid"


def check_one_process(method: str = "GPUSQ") -> None:
    """``method`` on a detector trains in one process: :class:`BackboneDistillLoss` calls the backbone, past a DDP
    wrapper's forward, so DDP would not average the gradients (MixA-Q's SAQA reuses the loss and this check).

    Raises:
        UnsupportedModelError: running under ``torchrun`` with more than one process.
    """
    if distributed.init_from_env():  # idempotent: the trainer joins the same group
        raise UnsupportedModelError(
            f"{method} on a detector trains in one process (its backbone loss bypasses DDP): run it without torchrun"
        )


def detector_layers() -> list[str]:
    """The layer globs GPUSQ sparsifies in a detector: its transformer's GEMMs."""
    return [f"{BODY}.{p}" for p in DEFAULT_LAYERS]


def backbone_points(model: nn.Module, vit_stages: int = 3) -> list[tuple[str, str]]:
    """(label, module path) of the transformer's feature points (patch embedding, stage ends) in the detector;
    the pyramid (the backbone's output) is the last term of :class:`BackboneDistillLoss`."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    if body is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no backbone.body: not a vitcompress detector")
    return [(label, f"{BODY}.{path}") for label, path in feature_points(body, vit_stages) if label != "final"]


class SceneImages(Dataset):
    """The images of a scene dataset as ``(image, 0)``: what the trainer batches (the loss needs no targets)."""

    def __init__(self, scenes: Dataset):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.scenes[i][0], 0


def _backbone(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)  # a DDP wrapper's model: its backbone is called directly
    return model.backbone(model.transform.normalize(x))


class BackboneDistillLoss:
    """``loss_fn(model, x, y) -> (loss, logs)`` for the trainer: ``Σ_j w_j·MSE_j`` between the backbones of a
    fixed ``teacher`` and the ``student`` detector (see the module docstring); ``y`` is not used.

    Args:
        point_weights: one weight per point and one for the pyramid (default: stage 1's ``(1, θ_1..θ_K, 1)``).
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, config: DistillConfig, point_weights: list[float] | None = None
    ):
        self.teacher, self.config = teacher.eval(), config
        self.points = backbone_points(student, config.vit_stages)
        labels = [*self.points, (PYRAMID, BODY)]
        self.weights = list(point_weights) if point_weights is not None else stage1_weights(labels, config)
        self.t_taps = FeatureTaps(teacher, self.points, "teacher")
        self.s_taps = FeatureTaps(student, self.points, "student")

    def terms(self, model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
        """MSE per feature point and of the pyramid (levels averaged), teacher detached."""
        with torch.no_grad():
            t_out = _backbone(self.teacher, x)
        s_out = _backbone(model, x)
        t, s = self.t_taps.features, self.s_taps.features
        out = [F.mse_loss(s[label], t[label]) for label, _ in self.points]
        return [*out, torch.stack([F.mse_loss(s_out[k], t_out[k]) for k in t_out]).mean()]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        feat = sum(w * t for w, t in zip(self.weights, self.terms(model, x)))
        loss = self.config.gamma * feat
        return loss, {"feat": feat.item(), "loss": loss.item()}

    def close(self) -> None:
        for taps in (self.t_taps, self.s_taps):
            taps.close()


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
