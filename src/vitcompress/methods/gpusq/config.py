"""What one GPUSQ-ViT run does: :class:`GPUSQConfig`, its quantization recipe and the two presets.

Recipes: ``gpusq-int8`` (2:4, INT8 weights and activations) and ``gpusq-int4`` (pair-wise 4:8, INT4
weights, INT8 activations). Why W4A8 for INT4: the paper's 62x "FLOPs" reduction for INT4 (31x for
INT8) is 2 (sparsity) x 32, the BOPs ratio of W4A8, where W4A4 would give 2 x 64 (Yu et al., CVPR 2023,
supplementary Table 2). LayerNorm inputs stay float; the patch embedding and head weights stay 8 bit
(:data:`vitcompress.config.EDGE_8BIT`, as in every vitcompress preset).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vitcompress.config import EDGE_8BIT, QuantSpec, Recipe
from vitcompress.errors import ConfigError
from vitcompress.sparsity import PATTERNS
from vitcompress.train.distill import DistillConfig
from vitcompress.train.trainer import TrainConfig
from vitcompress.validate import one_of, positive_int

GPUSQ_RECIPES = ("gpusq-int8", "gpusq-int4")
ON_INDIVISIBLE = ("error", "skip")


@dataclass(frozen=True)
class GPUSQConfig:
    """One GPUSQ-ViT run (build one with :func:`gpusq_preset`).

    Attributes:
        name: recipe name (``gpusq-int8`` / ``gpusq-int4`` or custom).
        pattern: ``"2:4"`` or ``"4:8"``.
        quant: the quantization recipe of stage 2 (scales become learnable).
        prune, qat: training of stage 1 and stage 2.
        distill: loss factors and switches (shared by both stages; ``weight_factors`` acts in stage 2).
        distill_prune: False = stage 1 trains on hard labels only ("2:4 without distillation").
        calib_size: calibration images a job draws from the training split (its ``--calib-size``);
            the PTQ start of stage 2 calibrates on all of ``calib``.
        factor_images: how many of the calibration images measure the weight factors ``W_j``.
        on_indivisible: layers whose reduction is not a multiple of m: ``"error"`` or ``"skip"`` (left dense).
        eval_stages: with evaluation data, evaluate the sparse float and the PTQ model too (False: only
            their size is reported; the final model is evaluated by the job either way).
    """

    name: str
    pattern: str
    quant: Recipe
    prune: TrainConfig
    qat: TrainConfig
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_prune: bool = True
    calib_size: int = 512
    factor_images: int = 256
    on_indivisible: str = "skip"
    eval_stages: bool = True

    def __post_init__(self) -> None:
        one_of("pattern", self.pattern, PATTERNS)
        one_of("on_indivisible", self.on_indivisible, ON_INDIVISIBLE)
        positive_int("calib_size", self.calib_size)
        positive_int("factor_images", self.factor_images)
        for flag in ("distill_prune", "eval_stages"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        for name, cls in (("quant", Recipe), ("prune", TrainConfig), ("qat", TrainConfig), ("distill", DistillConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")


def gpusq_quant_recipe(weight_bits: int, name: str) -> Recipe:
    """Per-channel symmetric weights at ``weight_bits`` (patch embedding, head: 8), 8-bit activations,
    q/k/v and softmax probabilities (uniform), LayerNorm inputs in float."""
    act = QuantSpec(8, "asymmetric")
    return Recipe(
        name=name,
        weight=QuantSpec(weight_bits, "symmetric", "channel"),
        act=act,
        qkv=act,
        probs=act,
        norm=QuantSpec(32),
        overrides=EDGE_8BIT,
    )


def gpusq_preset(
    name: str, steps: int = 300, qat_steps: int | None = None, batch_size: int = 64, seed: int = 0
) -> GPUSQConfig:
    """``gpusq-int8`` (2:4 + INT8) or ``gpusq-int4`` (4:8 + W4A8) with ``steps`` per stage (short schedules).

    Learning rates: 5e-4 for stage 1 (the paper's DeiT setting, supplementary Table 1), 1e-4 for QAT
    (fine-tuning a PTQ start). ``seed`` seeds stage 1; stage 2 uses ``seed + 1``.

    Raises:
        ConfigError: an unknown preset name or a non-positive step count or batch size.
    """
    one_of("preset", name, GPUSQ_RECIPES)
    positive_int("steps", steps)
    positive_int("qat_steps", qat_steps, optional=True)  # 0 is an error, not "the default"
    positive_int("batch_size", batch_size)
    int8 = name == "gpusq-int8"
    prune = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=5e-4,
        min_lr=1e-6,
        warmup_steps=min(20, steps // 10),
        seed=seed,
        checkpoint_every=100,
    )
    qat = replace(prune, steps=steps if qat_steps is None else qat_steps, lr=1e-4, seed=seed + 1)
    return GPUSQConfig(
        name=name,
        pattern="2:4" if int8 else "4:8",
        quant=gpusq_quant_recipe(8 if int8 else 4, name),
        prune=prune,
        qat=qat,
    )
