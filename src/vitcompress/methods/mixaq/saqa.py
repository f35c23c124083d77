"""SAQA: sparsity-aware quantization adaptation (MixA-Q, Wang et al., 2025; supplementary Table 6).

Fine-tunes a two-branch model (start: the training-free :func:`~vitcompress.methods.mixaq.mixaq_` model,
preferably built with LSQ-learnable scales, :func:`vitcompress.train.qat.qat_recipe`) with a new ratio
vector every iteration, drawn by the uniform-sum sampler (or the naive one, the baseline of Table 6), so
one set of weights serves every configuration the search may pick. Both branches' gradients reach the
shared weights. The loop is the generic resumable trainer (:func:`vitcompress.train.trainer.train`):
the ratio vector of step s is drawn from the torch stream the trainer seeds for step s, so a resumed run
samples the same vectors. A SIGTERM'd run raises :class:`~vitcompress.train.trainer.TrainingInterrupted` after
saving its state (nothing may search a half-trained model). On a Swin detector the loss is the distillation of
the backbone from the float detector and only the transformer trains (:mod:`~vitcompress.methods.mixaq.saqa_detector`).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq import saqa_detector as sd
from vitcompress.methods.mixaq.model import model_groups, set_ratios
from vitcompress.methods.mixaq.sampling import naive_sample, sum_range_from_cost, uniform_sum_sample
from vitcompress.models.detection import is_detector
from vitcompress.train.trainer import LossFn, TrainConfig, TrainingInterrupted, train
from vitcompress.validate import one_of, positive

log = logging.getLogger(__name__)

SAMPLERS = ("uniform-sum", "naive")


@dataclass(frozen=True)
class SAQAConfig:
    """Settings of :func:`saqa_`.

    Attributes:
        steps, batch_size, lr, warmup_steps, seed: as :class:`vitcompress.train.trainer.TrainConfig`.
        sampler: ``uniform-sum`` (MixA-Q supplementary Algorithm 1) or ``naive``.
        cost_range: relative-cost range of the uniform-sum sampler (the paper: (0.65, 0.95)).
        upper, step: the ratio grid (the paper: 0.8, 0.1).
        temperature: distillation temperature when a teacher is given (loss: KL at T, times T²).
    """

    steps: int = 200
    batch_size: int = 64
    lr: float = 1e-5
    warmup_steps: int = 0
    seed: int = 0
    sampler: str = "uniform-sum"
    cost_range: tuple[float, float] = (0.65, 0.95)
    upper: float = 0.8
    step: float = 0.1
    temperature: float = 1.0

    def __post_init__(self) -> None:
        one_of("sampler", self.sampler, SAMPLERS)
        positive("temperature", self.temperature)


def parse_saqa(text: str) -> SAQAConfig:
    """``--saqa``: ``on`` (the defaults) or ``KEY=VALUE[,KEY=VALUE...]`` over :class:`SAQAConfig`'s fields, e.g.
    ``steps=100,batch_size=8,lr=1e-4``.

    Raises:
        ConfigError: an unknown key or a value of the wrong type (one line, naming the allowed keys).
    """
    if text.strip() in ("on", "default", ""):
        return SAQAConfig()
    fields = {f.name: f for f in dataclasses.fields(SAQAConfig)}
    kwargs: dict = {}
    for item in text.split(","):
        key, sep, value = (s.strip() for s in item.partition("="))
        if not sep or key not in fields or key == "cost_range":
            allowed = ", ".join(k for k in fields if k != "cost_range")
            raise ConfigError(f"saqa: expected on or KEY=VALUE[,KEY=VALUE...] with KEY in {allowed}; got {item!r}")
        kind = type(getattr(SAQAConfig(), key))
        try:
            kwargs[key] = kind(value)
        except ValueError:
            noun = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise ConfigError(f"saqa: {key} takes {noun}, got {value!r}") from None
    return SAQAConfig(**kwargs)


def ratio_sampler(n_groups: int, config: SAQAConfig):
    """``seed -> ratio vector`` from the configured sampler."""
    if config.sampler == "naive":
        return lambda seed: naive_sample(n_groups, config.upper, 1, seed, config.step)[0]
    lo, hi = sum_range_from_cost(config.cost_range, n_groups)
    hi = min(hi, n_groups * config.upper)
    return lambda seed: uniform_sum_sample(n_groups, (min(lo, hi), hi), config.upper, 1, seed, step=config.step)[0]


def sampled_loss(model: nn.Module, config: SAQAConfig, term: LossFn) -> LossFn:
    """``term`` at a new ratio vector per call: the vector is drawn from the torch stream the trainer seeds for
    the step, set on ``model``, then ``term(net, x, y)`` runs; its logs gain ``ratio_sum``."""
    sample = ratio_sampler(len(model_groups(model)), config)

    def loss_fn(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        ratios = sample(int(torch.randint(0, 2**31 - 1, ())))  # the trainer seeds torch per step
        set_ratios(model, ratios, upper=config.upper)
        loss, logs = term(net, x, y)
        return loss, {**logs, "ratio_sum": float(sum(ratios))}

    return loss_fn


def saqa_(
    model: nn.Module,
    train_data: Dataset,
    config: SAQAConfig,
    teacher: nn.Module | None = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
) -> dict:
    """Fine-tune a two-branch MixA-Q model in place, one sampled ratio vector per step.

    Args:
        model: a Swin, or a Swin detector, after :func:`~vitcompress.methods.mixaq.mixaq_`.
        train_data: (image, label) items; a detector's: its train scenes, (image, target) items (images only
            are used).
        config: the :class:`SAQAConfig` (``temperature`` applies to a classifier's distillation only).
        teacher: float model; with it a classifier's loss is distillation (KL at ``temperature``) instead
            of cross-entropy on the labels. Required for a detector, whose loss is the backbone distillation
            of :mod:`~vitcompress.methods.mixaq.saqa_detector` and which trains only ``backbone.body``.
        state_dir, resume: checkpoints of the trainer.

    Returns:
        The trainer's summary (steps, seconds, history of ``loss`` and ``ratio_sum``; a detector's also
        ``feat``). The model is left at ratio 0 in eval mode.

    Raises:
        TrainingInterrupted: SIGTERM stopped the training after saving its state; run again with ``resume``.
        ConfigError: a detector without ``teacher``.
    """
    if is_detector(model):
        return _detector_saqa(model, train_data, config, teacher, state_dir, resume)
    if teacher is not None:
        teacher.eval()
    t = float(config.temperature)

    def term(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logits = net(x)
        if teacher is None:
            loss = F.cross_entropy(logits, y)
        else:
            with torch.no_grad():
                target = F.log_softmax(teacher(x) / t, dim=-1)
            loss = F.kl_div(F.log_softmax(logits / t, dim=-1), target, log_target=True, reduction="batchmean") * t * t
        return loss, {"loss": float(loss.detach())}

    return _run(model, train_data, config, sampled_loss(model, config, term), state_dir, resume)


def _detector_saqa(
    model: nn.Module,
    scenes: Dataset,
    config: SAQAConfig,
    teacher: nn.Module | None,
    state_dir: str | Path | None,
    resume: bool,
) -> dict:
    sd.check_detector_saqa(teacher)
    distill = sd.backbone_loss(teacher, model)
    try:
        with sd.body_only(model):
            loss_fn = sampled_loss(model, config, distill)
            return _run(model, sd.scene_images(scenes), config, loss_fn, state_dir, resume)
    finally:
        distill.close()


def _run(
    model: nn.Module,
    data: Dataset,
    config: SAQAConfig,
    loss_fn: LossFn,
    state_dir: str | Path | None,
    resume: bool,
) -> dict:
    """The generic trainer on ``loss_fn``; the model ends at ratio 0."""
    train_config = TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        min_lr=config.lr / 100,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        weight_decay=0.0,
        log_every=10,
    )
    try:
        result = train(model, loss_fn, data, train_config, state_dir=state_dir, resume=resume, desc="saqa")
    finally:
        set_ratios(model, [0.0] * len(model_groups(model)))
    if result["interrupted"]:  # the search must not start from a half-trained model
        raise TrainingInterrupted(
            f"SAQA stopped by SIGTERM at step {result['steps']}; state saved in {state_dir}; run again with resume "
            "to continue"
        )
    return result
