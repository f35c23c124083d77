"""Feature distillation on a detector's backbone: the loss GPUSQ-ViT (both stages) and MixA-Q's SAQA train with.

The MSE between a fixed teacher detector and the student at the transformer's feature points (patch embedding,
the last block of every stage) and on the feature pyramid (its levels averaged), weighted per point. Label-free
and at the cost of two backbone forwards: what every detection head reads is the pyramid, so matching it to the
teacher keeps the heads' input. Why not the detection losses is said where each method uses it
(:mod:`vitcompress.methods.gpusq.detector`, :mod:`vitcompress.methods.mixaq.saqa_detector`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitcompress import distributed
from vitcompress.errors import UnsupportedModelError
from vitcompress.train.distill import DistillConfig, FeatureTaps, feature_points, stage1_weights

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
