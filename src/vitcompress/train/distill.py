"""GPUSQ-ViT distillation losses (Algorithm 1 of Yu, Chen, Gan, Fan, "Boost Vision Transformer with
GPU-Friendly Sparsity and Quantization", CVPR 2023, arXiv:2305.10727; appendix §2.2).

``L = α·L_hard + β·L_soft + γ·L_feature``:

- ``L_hard``: cross entropy with the ground-truth labels, or with the teacher's predicted labels
  (``unsupervised=True``: Algorithm 1 line 11);
- ``L_soft``: ``KL(softmax(t_teacher/T) ‖ softmax(t_student/T))`` (batch mean) at temperature ``T``,
  as written in line 14 (no ``T²`` factor);
- ``L_feature``: ``Σ_j w_j · MSE(F_j^teacher, F_j^student)`` over the feature points: the patch
  embedding output, the last block of each stage (stage 1: ``w = θ_i``) and the final projection
  (the final LayerNorm output, the head's input; the paper's appendix §3.2 visualises exactly these). Stage 1
  uses ``w = (1, θ_1..θ_K, 1)``; stage 2 uses the weight factors ``W_j`` of line 22
  (:func:`weight_factors`).

Stages: a Swin model's stages are its ``layers.i``; a plain ViT/DeiT has one sequence of blocks,
cut into ``vit_stages`` equal groups (default 3; the paper leaves it open).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.validate import number, positive, positive_int

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    """Loss factors and switches of Algorithm 1.

    Attributes:
        alpha, beta, gamma: factors of the hard-label, soft-logit and feature losses (seed: 1, 10, 5).
        temperature: ``T`` of the soft logits.
        hard, soft, feature: switch each loss term on or off (Table 3 ablations).
        unsupervised: hard labels from the teacher's argmax instead of the ground truth.
        stage_factors: ``θ_i`` per stage; None = 1 for every stage.
        vit_stages: how many equal groups of blocks count as stages in a plain ViT.
        weight_factors: stage 2 only: weight the features by ``W_j`` from stage 1 (True) or equally
            (``1/(K+2)`` each, the same total scale; False = the Table 3 "weight factor off" row).
    """

    alpha: float = 1.0
    beta: float = 10.0
    gamma: float = 5.0
    temperature: float = 2.0
    hard: bool = True
    soft: bool = True
    feature: bool = True
    unsupervised: bool = False
    stage_factors: tuple[float, ...] | None = None
    vit_stages: int = 3
    weight_factors: bool = True

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma"):
            number(name, getattr(self, name), low=0)
        positive("temperature", self.temperature)
        positive_int("vit_stages", self.vit_stages)
        if self.stage_factors is not None:
            if isinstance(self.stage_factors, (str, bytes)) or not hasattr(self.stage_factors, "__iter__"):
                raise ConfigError(f"stage_factors must be a list of numbers, got {self.stage_factors!r}")
            for i, v in enumerate(self.stage_factors):
                number(f"stage_factors[{i}]", v, low=0)


def feature_points(model: nn.Module, vit_stages: int = 3) -> list[tuple[str, str]]:
    """(label, module path) of the critical layers: ``patch``, ``stage1``..``stageK``, ``final``.

    Raises:
        UnsupportedModelError: the model has neither ``blocks`` (ViT/DeiT) nor ``layers`` (Swin).
    """
    if not hasattr(model, "patch_embed"):
        raise UnsupportedModelError(f"{type(model).__name__} has no patch_embed: no feature points known")
    points = [("patch", "patch_embed")]
    if hasattr(model, "layers"):  # Swin: stage i = layers.i
        for i, layer in enumerate(model.layers):
            points.append((f"stage{i + 1}", f"layers.{i}.blocks.{len(layer.blocks) - 1}"))
    elif hasattr(model, "blocks"):
        depth = len(model.blocks)
        k = min(vit_stages, depth)
        ends = sorted({round(depth * (s + 1) / k) - 1 for s in range(k)})
        points += [(f"stage{s + 1}", f"blocks.{e}") for s, e in enumerate(ends)]
    else:
        raise UnsupportedModelError(f"{type(model).__name__} has neither blocks nor layers: no stages known")
    final = "fc_norm" if isinstance(getattr(model, "norm", None), nn.Identity) else "norm"
    points.append(("final", final))
    return points


class FeatureTaps:
    """Forward hooks storing the outputs of the feature points of one model (call :meth:`close`)."""

    def __init__(self, model: nn.Module, points: list[tuple[str, str]], role: str):
        self.features: dict[str, torch.Tensor] = {}
        self.handles = []
        for label, path in points:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise ConfigError(f"feature {label!r}: the {role} has no module {path!r}") from None
            self.handles.append(module.register_forward_hook(self._store(label)))

    def _store(self, label: str):
        def hook(_module, _inputs, output):
            self.features[label] = output

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def check_features(
    teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], points: list[tuple[str, str]]
) -> None:
    """Both models produced every feature with equal shapes; else ConfigError naming the feature."""
    for label, path in points:
        if label not in teacher or label not in student:
            raise ConfigError(
                f"feature {label!r} ({path}) was not produced by the "
                f"{'teacher' if label not in teacher else 'student'} forward"
            )
        if teacher[label].shape != student[label].shape:
            raise ConfigError(
                f"feature {label!r} ({path}): teacher shape {tuple(teacher[label].shape)} vs "
                f"student shape {tuple(student[label].shape)}; teacher and student must share "
                f"the architecture"
            )


class DistillLoss:
    """``loss_fn(model, x, y) -> (loss, logs)`` for the trainer: student ``model``, fixed teacher.

    Args:
        teacher: the reference model (dense float in stage 1, sparse float in stage 2); kept in eval mode.
        student: the model being trained (the plain module, not a DDP wrapper: hooks go on it).
        config: factors and switches.
        point_weights: one weight per feature point; default stage 1's ``(1, θ_1..θ_K, 1)``.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, config: DistillConfig, point_weights: list[float] | None = None
    ):
        self.teacher, self.config = teacher.eval(), config
        self.points = feature_points(student, config.vit_stages)
        teacher_points = feature_points(teacher, config.vit_stages)
        if teacher_points != self.points:
            label, t_path, s_path = next(
                ((s[0], t[1], s[1]) for t, s in zip(teacher_points, self.points) if t != s),
                (self.points[-1][0], "<missing>", self.points[-1][1]),
            )
            raise ConfigError(
                f"teacher/student architecture mismatch at feature {label!r}: teacher {t_path} vs student {s_path}"
            )
        self.weights = list(point_weights) if point_weights is not None else stage1_weights(self.points, config)
        if len(self.weights) != len(self.points):
            raise ConfigError(
                f"point_weights needs {len(self.points)} values (one per feature point "
                f"{[p for p, _ in self.points]}), got {len(self.weights)}"
            )
        self.t_taps = FeatureTaps(teacher, self.points, "teacher") if config.feature else None
        self.s_taps = FeatureTaps(student, self.points, "student") if config.feature else None
        self._checked = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        c = self.config
        with torch.no_grad():
            t_logits = self.teacher(x)
        s_logits = model(x)
        logs: dict[str, float] = {}
        loss = s_logits.new_zeros(())
        if c.hard:
            target = t_logits.argmax(-1) if c.unsupervised else y
            hard = F.cross_entropy(s_logits, target)
            loss, logs["hard"] = loss + c.alpha * hard, hard.item()
        if c.soft:
            soft = soft_logit_loss(s_logits, t_logits, c.temperature)
            loss, logs["soft"] = loss + c.beta * soft, soft.item()
        if c.feature:
            terms = self.feature_terms()
            feat = sum(w * t for w, t in zip(self.weights, terms))
            loss, logs["feat"] = loss + c.gamma * feat, feat.item()
        logs["loss"] = loss.item()
        return loss, logs

    def feature_terms(self) -> list[torch.Tensor]:
        """MSE per feature point of the last forward of both models (teacher detached)."""
        t, s = self.t_taps.features, self.s_taps.features
        if not self._checked:
            check_features(t, s, self.points)
            self._checked = True
        return [F.mse_loss(s[label], t[label].detach()) for label, _ in self.points]

    def close(self) -> None:
        for taps in (self.t_taps, self.s_taps):
            if taps is not None:
                taps.close()


def soft_logit_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(p_teacher ‖ p_student)`` of the softmax at ``temperature``, averaged over the batch."""
    return F.kl_div(
        F.log_softmax(student_logits / temperature, -1),
        F.log_softmax(teacher_logits / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )


def stage1_weights(points: list[tuple[str, str]], config: DistillConfig) -> list[float]:
    """``(1, θ_1..θ_K, 1)``: Algorithm 1 line 6."""
    stages = [label for label, _ in points if label.startswith("stage")]
    theta = config.stage_factors if config.stage_factors is not None else (1.0,) * len(stages)
    if len(theta) != len(stages):
        raise ConfigError(f"stage_factors needs {len(stages)} values (one per stage), got {len(theta)}")
    return [1.0, *map(float, theta), 1.0]


@torch.no_grad()
def weight_factors(
    teacher: nn.Module, student: nn.Module, batches: Iterable[torch.Tensor], config: DistillConfig
) -> list[float]:
    """Stage-2 feature weights ``W_j`` (Algorithm 1 line 22) from the stage-1 models.

    ``W_j = w_j·MSE_j / L_feature`` with ``w = (1, θ_1..θ_K, 1)`` and ``L_feature = Σ_j w_j·MSE_j``,
    the MSEs measured between the dense teacher and the sparse student over ``batches`` (summed
    over batches). They sum to 1. With ``config.weight_factors`` off: ``1/(K+2)`` each.
    """
    points = feature_points(student, config.vit_stages)
    if not config.weight_factors:
        return [1.0 / len(points)] * len(points)
    loss = DistillLoss(
        teacher, student, DistillConfig(vit_stages=config.vit_stages, stage_factors=config.stage_factors)
    )
    was_training = student.training
    student.eval()
    totals = torch.zeros(len(points), dtype=torch.float64)
    try:
        for x in batches:
            teacher(x)
            student(x)
            totals += torch.tensor([float(t) for t in loss.feature_terms()], dtype=torch.float64)
    finally:
        loss.close()
        student.train(was_training)
    return normalized_factors(totals, loss.weights)


def normalized_factors(totals: torch.Tensor, weights: list[float]) -> list[float]:
    """``w_j·MSE_j / Σ w·MSE`` from the summed errors ``totals`` and the weights ``w``; equal factors when every
    error is zero (the student equals the teacher: no preference)."""
    terms = totals * torch.tensor(weights, dtype=torch.float64)
    if float(terms.sum()) <= 0:
        return [1.0 / len(terms)] * len(terms)
    return (terms / terms.sum()).tolist()
