"""``allocate_bits``: F-LBQ on a model: distortion curves -> solver -> :class:`BitPlan`.

The ``compress_`` handler (:mod:`vitcompress.methods.flbq.step`) goes through the same two functions:
:func:`config_curves` to measure and :func:`allocate_bits` to solve.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from torch import nn

from vitcompress.errors import ConfigError
from vitcompress.methods.flbq.config import FLBQConfig
from vitcompress.methods.flbq.curves import Curves
from vitcompress.methods.flbq.measure import measure_curves
from vitcompress.methods.flbq.solvers import BitPlan, solve
from vitcompress.methods.flbq.units import backbone_layers, weight_units


def check_curves_match(curves: Curves, model: nn.Module, unit: str, exclude: tuple[str, ...] = ()) -> None:
    """Raise ConfigError naming the first unit where ``curves`` and ``model``'s units differ."""
    expected = {u.name: u.size for u in weight_units(model, unit, backbone_layers(model, exclude))}
    got = {u.name: u.size for u in curves.units}
    for name in list(expected) + list(got):
        if expected.get(name) != got.get(name):
            raise ConfigError(
                f"curves do not match the model's {unit!r} units: unit {name!r} has size "
                f"{got.get(name)} in the curves and {expected.get(name)} in the model"
            )


def config_curves(model: nn.Module, calib: Iterable | None, config: FLBQConfig, info: dict | None = None) -> Curves:
    """The distortion curves ``config`` asks for (unit, bits, target, n_images, exclude) on ``model``.

    Raises:
        ConfigError: ``calib`` is None.
    """
    if calib is None:
        raise ConfigError("calib is required to measure the distortion curves (or pass curves=)")
    return measure_curves(
        model, calib, config.unit, config.bits, config.target, config.n_images, exclude=config.exclude, info=info
    )


def allocate_bits(
    model: nn.Module,
    calib: Iterable | None,
    config: FLBQConfig,
    *,
    curves: Curves | None = None,
    solver: str | None = None,
) -> BitPlan:
    """Choose a weight bit width per unit of ``model``'s backbone under ``config.budget``.

    Args:
        model: the float timm ViT/DeiT/Swin (left unchanged).
        calib: calibration images for the curves (unused when ``curves`` is given).
        config: budget, unit, solver, bit widths, minimum width, curve settings.
        curves: curves measured before (checked against the model's units); skips the measurement.
        solver: run this solver instead of ``config.solver`` (the handler solves with both).

    Returns:
        The plan; :func:`~vitcompress.methods.flbq.apply.plan_to_recipe` turns it into a recipe.

    Raises:
        ConfigError: the curves do not match the model, or the budget is outside the feasible range.
    """
    if solver is not None:
        config = replace(config, solver=solver)
    if curves is None:
        curves = config_curves(model, calib, config)
    else:
        check_curves_match(curves, model, config.unit, config.exclude)
    return solve(curves, config.budget, config.solver, min_bits=config.min_bits, margin=config.margin, eps=config.eps)
