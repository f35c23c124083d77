"""Turning a :class:`BitPlan` into a :class:`Recipe` the quantization core applies.

A layer unit becomes an exact-name override ``<layer>.weight: {bits: b}``; the groups of a layer
become one override ``{granularity: group, group_size: 1, group_bits: [...]}``: every output channel
keeps its own scale (as in the curves) and carries its group's bit width. Weight scales use the
least-MSE search (``observer: mse``), as the curves were measured. Classifier layers get a uniform
``head_bits``. Activations follow the base recipe (8-bit by default). The recipe is plain data: it is
saved with the model (``vitcompress.quantize.save``) and rebuilds the same mixed-precision model.
"""

from __future__ import annotations

import re
from dataclasses import replace

from torch import nn

from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.errors import ConfigError
from vitcompress.methods.flbq.solvers import BitPlan
from vitcompress.methods.flbq.units import classifier_layers

_GROUP_NAME = re.compile(r"(.+)\.g(\d+)")
ACT_ROLES = ("act", "qkv", "probs", "norm")  # the activation points of a recipe (every role but "weight")


def base_recipe(act_bits: int) -> Recipe:
    """``w8a8`` with every activation point (linear inputs, q/k/v, probabilities, LN inputs) at ``act_bits``."""
    base = get_preset("w8a8")
    return replace(base, **{r: replace(getattr(base, r), bits=act_bits) for r in ACT_ROLES})


def _layer_weight(model: nn.Module, path: str) -> int | None:
    """Output channels of the Linear/Conv at ``path``; None if there is none."""
    try:
        m = model.get_submodule(path)
    except AttributeError:
        return None
    return m.weight.shape[0] if isinstance(m, nn.Linear | nn.Conv2d) else None


def plan_layers(plan: BitPlan, model: nn.Module) -> dict[str, list[int]]:
    """Layer path -> bit width of each of its units in order (one entry for a layer unit, one per
    group for group units).

    Raises:
        ConfigError: a unit names no layer of ``model``, or a layer's groups are incomplete.
    """
    layers: dict[str, dict[int, int]] = {}
    for name, b in plan.bits.items():
        if _layer_weight(model, name) is not None:
            layers.setdefault(name, {})[-1] = b
            continue
        m = _GROUP_NAME.fullmatch(name)
        if not m or _layer_weight(model, m.group(1)) is None:
            raise ConfigError(
                f"plan unit {name!r} is neither a Linear/Conv layer of the model nor a group '<layer>.g<i>' of one"
            )
        layers.setdefault(m.group(1), {})[int(m.group(2))] = b
    out = {}
    for layer, units in layers.items():
        if -1 in units:
            if len(units) > 1:
                raise ConfigError(f"plan holds layer {layer!r} both whole and as groups")
            out[layer] = [units[-1]]
            continue
        n, rows = len(units), _layer_weight(model, layer)
        if sorted(units) != list(range(n)) or rows % n:
            raise ConfigError(
                f"plan groups of layer {layer!r} must be g0..g{{k-1}} with k dividing its {rows} "
                f"output channels, got {sorted(units)}"
            )
        out[layer] = [units[i] for i in range(n)]
    return out


def plan_to_recipe(
    plan: BitPlan, model: nn.Module, base: Recipe | None = None, head_bits: int = 8, name: str | None = None
) -> Recipe:
    """The recipe that quantizes ``model``'s weights as ``plan`` says.

    Args:
        plan: a plan whose units are layers of ``model`` or ``<layer>.g<i>`` groups.
        model: the (float) model the plan was made for.
        base: activations and any other points (default: the ``w8a8`` preset: 8-bit activations,
            attention and LayerNorm inputs).
        head_bits: the uniform bit width of the classifier layers.
        name: recipe name (default ``flbq-<solver>-<budget>``).
    """
    base = base or get_preset("w8a8")
    weight = replace(base.weight, observer="mse")
    overrides = []
    for layer, bits in plan_layers(plan, model).items():
        if len(bits) == 1:
            overrides.append((f"{layer}.weight", {"bits": bits[0], "granularity": "channel", "observer": "mse"}))
            continue
        per_channel = [b for b in bits for _ in range(_layer_weight(model, layer) // len(bits))]
        overrides.append(
            (
                f"{layer}.weight",
                {
                    "bits": max(bits),
                    "granularity": "group",
                    "group_size": 1,
                    "group_bits": per_channel,
                    "observer": "mse",
                },
            )
        )
    QuantSpec(head_bits, "symmetric", "channel")  # validates head_bits (names the field)
    overrides += [(f"{h}.weight", {"bits": head_bits}) for h in classifier_layers(model) if h not in plan.bits]
    recipe = replace(base, name=name or f"flbq-{plan.solver}-{plan.budget:g}", weight=weight)
    return recipe.with_overrides(*overrides)


def layer_bits(plan: BitPlan, model: nn.Module) -> dict[str, float]:
    """Layer -> average bits of its units (weighted equally: a layer's groups have equal sizes)."""
    return {layer: sum(b) / len(b) for layer, b in plan_layers(plan, model).items()}
