"""Units of F-LBQ bit allocation: a backbone layer's weight, or G output channels of it.

Backbone layers are the model's ``nn.Linear`` and ``nn.Conv2d`` (quantized ones included) outside the
classifier (``model.get_classifier()`` and a distillation head; a detector's pyramid and detection heads,
``vitcompress_heads``), minus ``exclude`` globs. The classifier gets a uniform bit width instead (as the
paper's detection heads do).

Unit names: the layer path (``blocks.3.mlp.fc1``) for ``unit="layer"``, the layer path plus
``.g<i>`` (``blocks.3.mlp.fc1.g7``: output channels ``7G..8G-1``) for ``unit="group:G"``.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from vitcompress.errors import ConfigError

_GROUP = re.compile(r"group:(\d+)")


@dataclass(frozen=True)
class WeightUnit:
    """One unit: ``layer``'s output channels ``start..stop-1`` (all of them for a layer unit).

    Attributes:
        name: unit name (see the module docstring).
        layer: module path of the layer.
        start, stop: the output-channel range.
        size: number of weights n_u.
    """

    name: str
    layer: str
    start: int
    stop: int
    size: int


def parse_unit(unit: str) -> int | None:
    """``"layer"`` -> None; ``"group:G"`` -> G (>= 1). Anything else is a ConfigError."""
    if unit == "layer":
        return None
    m = _GROUP.fullmatch(str(unit))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"unit must be 'layer' or 'group:G' with G >= 1 output channels, got {unit!r}")
    return int(m.group(1))


def classifier_layers(model: nn.Module) -> list[str]:
    """Paths of the Linear/Conv layers of the classifier (outside the backbone)."""
    heads = []
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        heads += head if isinstance(head, tuple) else [head]
    if isinstance(getattr(model, "head_dist", None), nn.Module):
        heads.append(model.head_dist)
    named = getattr(model, "vitcompress_heads", None)  # a detector's pyramid and detection heads
    if isinstance(named, (tuple, list)):
        heads += [model.get_submodule(n) for n in named]
    ids = {id(m) for h in heads if isinstance(h, nn.Module) for m in h.modules()}
    return [n for n, m in model.named_modules() if id(m) in ids and isinstance(m, nn.Linear | nn.Conv2d)]


def backbone_layers(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[str]:
    """Paths of the backbone's Linear/Conv layers, in module order.

    Raises:
        ConfigError: an ``exclude`` glob matches no layer, or nothing is left.
    """
    heads = set(classifier_layers(model))
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d) and n not in heads]
    for pattern in exclude:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in layers):
            raise ConfigError(f"exclude pattern {pattern!r} matches no backbone layer (e.g. {layers[:3]})")
    kept = [n for n in layers if not any(fnmatch.fnmatchcase(n, p) for p in exclude)]
    if not kept:
        raise ConfigError("no backbone layer left to allocate bits to (check exclude)")
    return kept


def weight_units(model: nn.Module, unit: str, layers: list[str]) -> list[WeightUnit]:
    """The units of ``layers``.

    Raises:
        ConfigError: G does not divide a layer's output channels (names the layer).
    """
    g = parse_unit(unit)
    out = []
    for path in layers:
        w = model.get_submodule(path).weight
        rows, per_row = w.shape[0], w[0].numel()
        if g is None:
            out.append(WeightUnit(path, path, 0, rows, rows * per_row))
            continue
        if rows % g:
            raise ConfigError(
                f"group size {g} does not divide the {rows} output channels of layer {path!r}; "
                f"choose G among the common divisors of the layers' output channels"
            )
        out += [WeightUnit(f"{path}.g{i}", path, i * g, (i + 1) * g, g * per_row) for i in range(rows // g)]
    return out
