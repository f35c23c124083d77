"""``allocate_bits``: the F-LBQ public verb (METHODS.md §2): curves -> solver -> :class:`BitPlan`."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from torch import nn

from vitcompress.errors import ConfigError
from vitcompress.search.bitalloc.curves import Curves
from vitcompress.search.bitalloc.measure import DEFAULT_BITS, measure_curves
from vitcompress.search.bitalloc.solvers import SOLVERS, BitPlan, min_bits_from_margin
from vitcompress.search.bitalloc.units import backbone_layers, weight_units

log = logging.getLogger(__name__)


def check_curves_match(curves: Curves, model: nn.Module, unit: str, exclude: tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming the first unit where ``curves`` and ``model``'s units differ."""
    expected = {u.name: u.size for u in weight_units(model, unit, backbone_layers(model, exclude))}
    got = {u.name: u.size for u in curves.units}
    for name in list(expected) + list(got):
        if expected.get(name) != got.get(name):
            raise ConfigError(f"curves do not match the model's {unit!r} units: unit {name!r} has size "
                              f"{got.get(name)} in the curves and {expected.get(name)} in the model")


def allocate_bits(model: nn.Module, calib: Iterable | None, budget: float, unit: str = "layer", solver: str = "dp",
                  *, bits: Sequence[int] = DEFAULT_BITS, min_bits: int | None = None, margin: float | None = None,
                  target: str = "pre_logits", n_images: int = 64, exclude: tuple[str, ...] = (),
                  curves: Curves | None = None, eps: float = 0.02, progress: bool = True) -> BitPlan:
    """Choose a weight bit width per unit of ``model``'s backbone under an average budget.

    Args:
        model: the float timm ViT/DeiT/Swin.
        calib: calibration images for the curves (unused when ``curves`` is given).
        budget: average bits per backbone weight ``B``.
        unit: ``"layer"`` or ``"group:G"``.
        solver: ``"dp"`` (exact knapsack) or ``"lg"`` (Lagrangian).
        bits: candidate bit widths.
        min_bits: no unit below this width; or ``margin`` m for ``ceil(B − m)`` (seed 003: 1 or 2).
        target, n_images, exclude: see :func:`~vitcompress.search.bitalloc.measure.measure_curves`.
        curves: curves measured before (checked against the model's units); skips the measurement.
        eps: LG tolerance on the average bits.
        progress: progress bar while measuring.

    Returns:
        The plan; :func:`~vitcompress.search.bitalloc.apply.plan_to_recipe` turns it into a recipe.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if min_bits is not None and margin is not None:
        raise ConfigError("give min_bits or margin, not both")
    if margin is not None:
        min_bits = min_bits_from_margin(budget, margin)
    if curves is None:
        if calib is None:
            raise ConfigError("calib is required to measure the distortion curves (or pass curves=)")
        curves = measure_curves(model, calib, unit, bits, target, n_images, exclude=exclude, progress=progress)
    else:
        check_curves_match(curves, model, unit, exclude)
    kwargs = {"eps": eps} if solver == "lg" else {}
    return SOLVERS[solver](curves, budget, min_bits=min_bits, **kwargs)
