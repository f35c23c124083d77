"""GPUSQ-ViT: sparsify -> distill -> quantize -> QAT, as one recipe.

Yu, Chen, Gan, Fan, "Boost Vision Transformer with GPU-Friendly Sparsity and Quantization", CVPR 2023,
arXiv:2305.10727; Algorithm 1 of its supplementary material (line numbers below refer to it).

Stage 1 (lines 1–17): the dense float model is the teacher; the student is the same model with fixed
N:M masks, trained with ``α·L_hard + β·L_soft + γ·L_feature``. Between the stages the weight factors
``W_j`` are measured between the dense teacher and the sparse student (line 22). Stage 2 (lines 18–35):
the sparse float model is the teacher; the student is its PTQ-initialised quantized copy (LSQ scales),
trained with the ``W_j``-weighted feature loss. Masks never change. A detector trains its transformer with the
feature loss on the backbone alone (:mod:`~vitcompress.methods.gpusq.detector`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from vitcompress.data.calib import first_batches
from vitcompress.device import model_device
from vitcompress.methods.gpusq import detector as det
from vitcompress.methods.gpusq.config import GPUSQConfig
from vitcompress.models.detection import is_detector
from vitcompress.sparsity import DEFAULT_LAYERS, mask_gradients_, sparsify_
from vitcompress.train.distill import DistillLoss, weight_factors
from vitcompress.train.qat import prepare_sparse_qat_
from vitcompress.train.trainer import TrainConfig, TrainingInterrupted, train

log = logging.getLogger(__name__)

StageHook = Callable[[str, nn.Module], None]


def sparse_distill_(
    model: nn.Module, train_set: Dataset, config: GPUSQConfig, *, state_dir: Path | None = None, resume: bool = False
) -> tuple[nn.Module, dict]:
    """Stage 1: sparsify ``model`` in place and train it against its dense copy. Returns (dense teacher, info).

    Raises:
        TrainingInterrupted: SIGTERM stopped the training (its state is saved in ``state_dir/prune``).
    """
    teacher = copy.deepcopy(model).eval()
    layers = det.detector_layers() if is_detector(model) else DEFAULT_LAYERS
    plan = sparsify_(model, config.pattern, layers=layers, on_indivisible=config.on_indivisible)
    dcfg = config.distill if config.distill_prune else replace(config.distill, soft=False, feature=False)
    info = _train_stage(
        model,
        _distill_loss(teacher, model, dcfg),
        train_set,
        config.prune,
        state_dir,
        "prune",
        resume,
        "stage 1 (sparse distillation)",
    )
    info["sparse_layers"] = plan
    return teacher, info


def _distill_loss(
    teacher: nn.Module, student: nn.Module, config, point_weights: list[float] | None = None
) -> DistillLoss | det.BackboneDistillLoss:
    """GPUSQ's distillation loss; a detector's: the feature term on its backbone (``config``'s switches aside)."""
    if is_detector(student):
        return det.BackboneDistillLoss(teacher, student, config, point_weights)
    return DistillLoss(teacher, student, config, point_weights=point_weights)


def _train_stage(
    model: nn.Module,
    loss: DistillLoss | det.BackboneDistillLoss,
    train_set: Dataset,
    config: TrainConfig,
    state_dir: Path | None,
    name: str,
    resume: bool,
    stage: str,
) -> dict:
    """One stage on the generic trainer (masks held by gradient masking), its state in ``state_dir/name``."""
    try:
        info = train(
            model,
            loss,
            train_set,
            config,
            state_dir / name if state_dir else None,
            resume,
            after_backward=mask_gradients_,
            desc=stage,
        )
    finally:
        loss.close()
    # a SIGTERM'd stage saved its state: the next stage must not start from a half-trained model
    if info["interrupted"]:
        raise TrainingInterrupted(
            f"{stage} stopped by SIGTERM at step {info['steps']}; state saved in "
            f"{state_dir}; run again with resume to continue"
        )
    return info


def sparse_qat_(
    model: nn.Module,
    train_set: Dataset,
    calib: Dataset,
    factors: list[float],
    config: GPUSQConfig,
    *,
    state_dir: Path | None = None,
    resume: bool = False,
    on_stage: StageHook | None = None,
) -> tuple[nn.Module, dict]:
    """Stage 2: PTQ the sparse float ``model`` in place, then QAT against its float copy. Returns (teacher, info).

    Raises:
        TrainingInterrupted: SIGTERM stopped the training (its state is saved in ``state_dir/qat``).
    """
    teacher = copy.deepcopy(model).eval()
    prepare_sparse_qat_(model, config.quant, calib)
    if on_stage is not None:
        on_stage("ptq", model)
        model.train()
    loss = _distill_loss(teacher, model, config.distill, factors)
    info = _train_stage(model, loss, train_set, config.qat, state_dir, "qat", resume, "stage 2 (sparse QAT)")
    return teacher, info


def gpusq_(
    model: nn.Module,
    train_set: Dataset,
    calib: Dataset,
    config: GPUSQConfig,
    *,
    state_dir: str | Path | None = None,
    resume: bool = False,
    stop_after_prune: bool = False,
    on_stage: StageHook | None = None,
) -> dict:
    """Both stages on ``model`` (in place: it ends sparse and quantized).

    Args:
        model: a dense float timm ViT/DeiT/Swin, or a detector (its transformer is pruned; see
            :mod:`~vitcompress.methods.gpusq.detector`).
        train_set: training images ``(image, label)`` (augmented) for both stages; a detector's: scenes.
        calib: calibration images for the PTQ start of stage 2; its first ``config.factor_images``
            measure the weight factors.
        config: the run (see :func:`~vitcompress.methods.gpusq.config.gpusq_preset`).
        state_dir: resumable training state (``prune/`` and ``qat/`` under it); None = no checkpoints.
        resume: continue from the state in ``state_dir``.
        stop_after_prune: return after stage 1 (the model stays sparse and float).
        on_stage: ``on_stage(name, model)`` is called after stage 1 (``"sparse_float"``), after PTQ
            (``"ptq"``) and after QAT (``"qat"``), e.g. to evaluate each step.

    Returns:
        ``{"dense": dense float copy, "sparse_float": sparse float copy after stage 1, "weight_factors",
        "prune": stage-1 info, "qat": stage-2 info}`` (no ``weight_factors``/``qat`` with ``stop_after_prune``).

    Raises:
        TrainingInterrupted: SIGTERM stopped a stage after saving its state; the next stage did not start.
    """
    state = Path(state_dir) if state_dir is not None else None
    detector = is_detector(model)
    if detector:  # scenes: the trainer batches their images (the backbone loss needs no targets)
        det.check_one_process()
        train_set = det.SceneImages(train_set)
    dense, prune_info = sparse_distill_(model, train_set, config, state_dir=state, resume=resume)
    out = {"dense": dense, "prune": prune_info, "sparse_float": copy.deepcopy(model).eval()}
    if on_stage is not None:
        on_stage("sparse_float", model)
    if stop_after_prune:
        return out
    batches = first_batches(calib, config.factor_images, what="factor_images", device=model_device(model))
    factors = (det.detector_weight_factors if detector else weight_factors)(dense, model, batches, config.distill)
    log.info("weight factors W_j: %s", [round(w, 4) for w in factors])
    out["weight_factors"] = factors
    _, out["qat"] = sparse_qat_(
        model, train_set, calib, factors, config, state_dir=state, resume=resume, on_stage=on_stage
    )
    if on_stage is not None:
        on_stage("qat", model)
    return out
