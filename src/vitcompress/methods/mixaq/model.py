"""MixA-Q on a timm Swin: two-branch blocks, ratio vectors, training-free calibration.

- :func:`two_branch_` replaces every ``SwinTransformerBlock`` of a quantized Swin with a
  :class:`~vitcompress.methods.mixaq.two_branch.TwoBranchSwinBlock` whose low branch has ``low_bits`` activations.
- :func:`set_ratios` sets one compression ratio per ratio group (:func:`ratio_groups`: one per pair of
  consecutive blocks, the last block of an odd-depth stage alone) and optionally one pruning ratio.
- :func:`mixaq_` is the training-free verb: PTQ with the high recipe, two-branch conversion, then the
  low branch's activation quantizers calibrated on the windows that go low.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitcompress.config import Recipe
from vitcompress.data.calib import count_batches, iter_images
from vitcompress.device import model_device
from vitcompress.errors import ConfigError, StateError, UnsupportedModelError
from vitcompress.methods.mixaq.sampling import RatioGroup, ratio_groups
from vitcompress.methods.mixaq.two_branch import StageImportance, TwoBranchSwinBlock, window_count
from vitcompress.quant import Quantizer
from vitcompress.quantize import quantize_, recipe_of

log = logging.getLogger(__name__)

DEFAULT_UPPER = 0.8  # the MixA-Q paper's ratios: {0, 0.1, ..., 0.8}
LOW_BITS = (2, 3, 4, 5, 6, 7, 8)


def swin_of(model: nn.Module) -> SwinTransformer:
    """The Swin MixA-Q works on: the model itself, or a Swin detector's backbone (``backbone.body``, see
    :mod:`vitcompress.models.detection`), whose window scores then come from the detection scenes."""
    body = getattr(getattr(model, "backbone", None), "body", None)
    swin = body if hasattr(model, "detector_config") and isinstance(body, SwinTransformer) else model
    if not isinstance(swin, SwinTransformer):
        raise UnsupportedModelError(
            f"MixA-Q needs window attention (a timm SwinTransformer or a Swin detector), got {type(model).__name__}"
        )
    return swin


def _check_swin(model: nn.Module) -> None:
    swin_of(model)


def model_groups(model: nn.Module) -> list[RatioGroup]:
    """The ratio groups of a Swin: swin-fmnist and Swin-T (depths 2, 2, 6, 2) have 6."""
    return ratio_groups([len(stage.blocks) for stage in swin_of(model).layers])


def mixed_blocks(model: nn.Module) -> dict[str, TwoBranchSwinBlock]:
    """The two-branch blocks by module path in the Swin (``layers.s.blocks.j``); StateError if
    :func:`two_branch_` was not applied."""
    blocks = {n: m for n, m in swin_of(model).named_modules() if isinstance(m, TwoBranchSwinBlock)}
    if not blocks:
        raise StateError("model has no two-branch blocks: run two_branch_(model, low_bits) or mixaq_ first")
    return blocks


def two_branch_(model: nn.Module, low_bits: int) -> nn.Module:
    """Replace every Swin block of a quantized Swin (in place) with a two-branch block (ratio 0).

    Args:
        model: a timm ``SwinTransformer`` quantized with :func:`vitcompress.quantize.quantize_`.
        low_bits: activation bits of the low branch, in 2..8 (its quantizers are left uncalibrated:
            see :func:`calibrate_low`).

    Raises:
        UnsupportedModelError: not a Swin; StateError: not quantized or already converted;
        ConfigError: ``low_bits`` out of range.
    """
    _check_swin(model)
    recipe_of(model)
    if isinstance(low_bits, bool) or low_bits not in LOW_BITS:
        raise ConfigError(f"low_bits: must be one of {list(LOW_BITS)}, got {low_bits!r}")
    if any(isinstance(m, TwoBranchSwinBlock) for m in model.modules()):
        raise StateError("model already has two-branch blocks")
    for s, stage in enumerate(swin_of(model).layers):
        shared = StageImportance()  # computed once per stage, by its first block
        for j, block in enumerate(stage.blocks):
            if not isinstance(block, SwinTransformerBlock):
                raise UnsupportedModelError(
                    f"layers.{s}.blocks.{j}: expected a SwinTransformerBlock, got {type(block).__name__}"
                )
            name = f"layers.{s}.blocks.{j}"
            stage.blocks[j] = TwoBranchSwinBlock.from_block(block, low_bits, name, shared, stage_head=j == 0)
    return model


def _check_vector(field: str, values: Sequence[float], n: int, upper: float) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ConfigError(f"{field}: must be a list of {n} numbers in [0, {upper:g}], got {values!r}")
    if len(values) != n:
        raise ConfigError(f"{field}: must hold {n} values (one per block pair), got {len(values)}")
    out = []
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= upper:
            raise ConfigError(f"{field}[{i}]: must be in [0, {upper:g}], got {v!r}")
        out.append(float(v))
    return out


def set_ratios(
    model: nn.Module, ratios: Sequence[float], prune: Sequence[float] | None = None, upper: float = DEFAULT_UPPER
) -> None:
    """Set the compression ratio (and optionally the pruning ratio) of every ratio group.

    A block of a group with ratio r sends ``round(r·nW)`` of its ``nW`` windows (halves up) to the low
    branch, after pruning ``round(p·nW)``; the low count is capped at the windows left.

    Args:
        model: a Swin after :func:`two_branch_`.
        ratios: one ratio per group of :func:`model_groups`, each in ``[0, upper]``.
        prune: one pruning ratio per group, each in ``[0, 1]`` (None: no pruning).
        upper: the largest allowed compression ratio (the MixA-Q paper: 0.8).

    Raises:
        ConfigError: a wrong length or a value out of range (names the index and the range).
    """
    blocks = mixed_blocks(model)
    groups = model_groups(model)
    r = _check_vector("ratios", ratios, len(groups), upper)
    p = _check_vector("prune", prune, len(groups), 1.0) if prune is not None else [0.0] * len(groups)
    for g, ri, pi in zip(groups, r, p, strict=True):
        for name in g.blocks:
            blocks[name].ratio, blocks[name].prune = ri, pi


def get_ratios(model: nn.Module) -> tuple[list[float], list[float]]:
    """(ratios, prune) per group, read from each group's first block."""
    blocks = mixed_blocks(model)
    groups = model_groups(model)
    return [blocks[g.blocks[0]].ratio for g in groups], [blocks[g.blocks[0]].prune for g in groups]


def low_quantizers(model: nn.Module) -> list[Quantizer]:
    """The low branches' own activation quantizers (the shared weight quantizers excluded)."""
    out, seen = [], set()
    for block in mixed_blocks(model).values():
        high = {id(q) for m in block.branch("high").values() for q in m.modules() if isinstance(q, Quantizer)}
        for q in block.low.modules():
            if isinstance(q, Quantizer) and id(q) not in high and id(q) not in seen:
                seen.add(id(q))
                out.append(q)
    return out


@torch.no_grad()
def calibrate_low(
    model: nn.Module, calib: Dataset | DataLoader | Iterable, calib_ratio: float = DEFAULT_UPPER, batch_size: int = 64
) -> int:
    """Calibrate the low branches' activation quantizers on the windows that go low at ``calib_ratio``.

    As in FQ-ViT the statistics are those of the float model (every other quantizer passes through).
    The low sets are nested (a smaller ratio's set is inside a larger one's), so calibrating at the
    largest ratio the search allows (default 0.8) covers every window that can ever run low, and only
    those: the less important windows have a narrower range, which a low bit width needs most.
    Returns the number of images seen. The ratios in place before the call are restored.
    """
    lows = low_quantizers(model)
    low_ids = {id(q) for q in lows}
    others = [q for q in model.modules() if isinstance(q, Quantizer) and id(q) not in low_ids]
    saved_enabled = [q.enabled for q in others]
    saved_ratios = get_ratios(model)
    if not (isinstance(calib_ratio, (int, float)) and 0 < calib_ratio <= 1):
        raise ConfigError(f"calib_ratio: must be in (0, 1], got {calib_ratio!r}")
    for block in mixed_blocks(model).values():
        # every low branch must see some windows: a block whose windows are too few for calib_ratio
        # to select one (1 window, ratio < 0.5) is calibrated on all of them
        block.ratio = calib_ratio if window_count(calib_ratio, block.n_windows) else 1.0
        block.prune = 0.0
    for q in others:
        q.enabled = False
    for q in lows:
        q.reset_stats()
        q.calibrating = q.spec.enabled
    model.eval()
    seen = 0
    try:
        batches = iter_images(calib, batch_size, device=model_device(model))
        for x in tqdm(batches, desc="calibrate low", leave=False, total=count_batches(calib, batch_size)):
            model(x)
            seen += len(x)
    finally:
        for q in lows:
            q.calibrating = False
        for q, was in zip(others, saved_enabled, strict=True):
            q.enabled = was
        set_ratios(model, *saved_ratios, upper=1.0)
    for q in lows:
        q.compute_qparams()
    return seen


def mixaq_(
    model: nn.Module,
    calib: Dataset | DataLoader | Iterable,
    high_recipe: Recipe,
    low_bits: int,
    calib_ratio: float = DEFAULT_UPPER,
    batch_size: int = 64,
) -> nn.Module:
    """Training-free MixA-Q: quantize a float Swin in place with ``high_recipe`` (PTQ), convert its blocks
    to two-branch blocks with ``low_bits`` activations in the low branch and calibrate that branch.

    Example: ``mixaq_(model, calib, get_preset("w8a8"), 4)`` gives the MixA-Q paper's A8/A4 model;
    ``mixaq_(model, calib, get_preset("w4a4"), 2)`` the W4 A4/A2 one. All ratios start at 0 (the model
    then equals the PTQ model); choose them with :func:`set_ratios`.

    Raises:
        UnsupportedModelError: the model is not a Swin (MixA-Q needs window attention).
    """
    _check_swin(model)
    if isinstance(low_bits, bool) or low_bits not in LOW_BITS:
        raise ConfigError(f"low_bits: must be one of {list(LOW_BITS)}, got {low_bits!r}")
    quantize_(model, high_recipe, calib, batch_size=batch_size)
    two_branch_(model, low_bits)
    calibrate_low(model, calib, calib_ratio, batch_size=batch_size)
    log.info("MixA-Q: %s high, A%d low, %d two-branch blocks", high_recipe.name, low_bits, len(mixed_blocks(model)))
    return model


def memoized_evaluator(
    model: nn.Module, score: Callable[[nn.Module], float], bops: Callable[[nn.Module], int]
) -> Callable[[tuple[float, ...]], tuple[float, int]]:
    """``ratios -> (score(model), bops(model))`` for a two-branch model set to ``ratios`` (they are left set).

    Ratio vectors that select the same number of low windows in every block (a 1-window stage rounds
    every ratio below 0.5 to none) give the same model: they are evaluated once.
    """
    blocks = list(mixed_blocks(model).values())
    memo: dict[tuple[tuple[int, int], ...], tuple[float, int]] = {}

    def evaluate_ratios(ratios: tuple[float, ...]) -> tuple[float, int]:
        set_ratios(model, ratios, upper=1.0)
        key = tuple(b.window_counts(b.n_windows) for b in blocks)
        if key not in memo:
            memo[key] = (score(model), bops(model))
        return memo[key]

    return evaluate_ratios
