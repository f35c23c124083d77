"""Quantization-aware training set-up for sparse models (stage 2 of GPUSQ-ViT: Yu, Chen, Gan, Fan, "Boost
Vision Transformer with GPU-Friendly Sparsity and Quantization", CVPR 2023, arXiv:2305.10727).

The quantized student starts from the sparse float model by PTQ (:func:`vitcompress.quantize.quantize_`),
then weights and scales are learnt: every enabled uniform quantizer gets an LSQ scale
(``QuantSpec.learnable``). The N:M masks are carried across the module replacement, so the pattern
holds through QAT and in the saved model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from torch import nn

from vitcompress.config import ROLES, QuantSpec, Recipe
from vitcompress.errors import ConfigError, StateError
from vitcompress.quantize import quantize_
from vitcompress.sparsity import attach_masks_, masks_of


def _learnable(spec: QuantSpec) -> QuantSpec:
    uniform = spec.scheme in ("symmetric", "asymmetric") and spec.granularity != "token"
    return replace(spec, learnable=True) if spec.enabled and uniform else spec


def qat_recipe(recipe: Recipe) -> Recipe:
    """``recipe`` with LSQ-learnable scales on every enabled uniform (non-dynamic) role spec.

    Overrides inherit ``learnable`` from their role default (they only change fields they name).
    """
    return replace(recipe, name=recipe.name, **{role: _learnable(getattr(recipe, role)) for role in ROLES})


def check_sparse_recipe(recipe: Recipe) -> None:
    """A recipe that keeps pruned weights at exactly 0: symmetric weights (0 on the grid), no bias correction."""
    if recipe.weight.scheme != "symmetric":
        raise ConfigError(
            f"weight scheme must be 'symmetric' for a sparse model (0 must stay 0), got {recipe.weight.scheme!r}"
        )
    if any(
        dict(changes).get("scheme", "symmetric") != "symmetric"
        for p, changes in recipe.overrides
        if p.endswith(".weight")
    ):
        raise ConfigError("weight overrides of a sparse model must keep scheme 'symmetric'")
    if recipe.bias_correction:
        raise ConfigError("bias_correction must be false for a sparse model: it moves pruned weights off 0")


def prepare_sparse_qat_(model: nn.Module, recipe: Recipe, calib: Iterable, batch_size: int = 64) -> nn.Module:
    """PTQ the sparse float ``model`` in place with ``qat_recipe(recipe)``, keeping its masks; train mode.

    Raises:
        StateError: the model carries no N:M masks (sparsify before quantizing).
        ConfigError: the recipe would not keep pruned weights at zero.
    """
    masks = masks_of(model)
    if not masks:
        raise StateError("model has no N:M masks: run sparsify_(model, pattern) before sparse QAT")
    check_sparse_recipe(recipe)
    quantize_(model, qat_recipe(recipe), calib, batch_size=batch_size)
    attach_masks_(model, masks)
    return model.train()
