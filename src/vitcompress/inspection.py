"""What a recipe will quantize in a model, before any data is touched (``vitcompress inspect``).

The model is copied and prepared with the recipe (no calibration: a zero image runs once to count
MACs and find the attention matmuls). The answer lists every quantization point with its role and bits,
every module left in float and why, how many attention blocks there are and how many of them have their
softmax output and both matmuls quantized, and the MACs and BOPs of one image.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from vitcompress.config import Recipe
from vitcompress.cost import cost
from vitcompress.errors import UnsupportedModelError
from vitcompress.models.inputs import zero_image
from vitcompress.nn.convert import attention_summary, float_modules, point_role, prepare, quantization_points


@dataclass(frozen=True)
class Point:
    """One quantization point: ``name`` (``blocks.0.attn.qkv.weight``), ``role``, ``bits``, ``scheme``,
    ``granularity``."""

    name: str
    role: str
    bits: int
    scheme: str
    granularity: str


@dataclass(frozen=True)
class Inspection:
    """What :func:`inspect_model` found.

    Attributes:
        recipe: the recipe's name.
        points: every quantization point, in module order.
        float_modules: ``{name, type, why}`` of each module with weights or an activation matmul left in float.
        attention_modules: attention blocks in the model.
        quantized_attention: those whose softmax output and both matmuls have quantization points.
        macs: multiply-accumulates of one image; ``bops``/``rel_bops`` at the recipe's bits.
        input_size: the square image size counted.
        error: the one-line error quantizing with this recipe would raise (``unknown_layers: error`` and a
            module nothing quantizes), or None.
    """

    recipe: str
    points: tuple[Point, ...]
    float_modules: tuple[dict[str, str], ...]
    attention_modules: int
    quantized_attention: int
    macs: int
    bops: int
    rel_bops: float
    input_size: int
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["points"], d["float_modules"] = list(d["points"]), list(d["float_modules"])
        return d


def inspect_model(
    model: nn.Module, recipe: Recipe, input_size: int | None = None, in_chans: int | None = None
) -> Inspection:
    """Prepare a copy of ``model`` with ``recipe`` and describe it; ``model`` is not changed.

    Raises:
        UnsupportedModelError: the model is already quantized.
        ConfigError: an override pattern matches no point; ``input_size`` missing or not accepted.
    """
    error = None
    example = None if input_size is None else zero_image(model, input_size, in_chans)  # else the model's own
    prepared = copy.deepcopy(model)
    try:
        prepare(prepared, recipe, example)
    except UnsupportedModelError as e:
        if recipe.unknown_layers != "error" or "already quantized" in str(e):
            raise
        error = str(e)
        prepared = prepare(copy.deepcopy(model), replace(recipe, unknown_layers="float"), example)
    points = tuple(
        Point(name, point_role(name, qz), qz.spec.bits, qz.spec.scheme, qz.spec.granularity)
        for name, qz in quantization_points(prepared)
    )
    for _, qz in quantization_points(prepared):  # bits are all cost needs: the probe passes every quantizer through
        qz.enabled = qz.spec.enabled
    report = cost(prepared, input_size=input_size, in_chans=in_chans)
    attention = attention_summary(prepared)
    return Inspection(
        recipe=recipe.name,
        points=points,
        float_modules=tuple(f.to_dict() for f in float_modules(prepared)),
        attention_modules=attention.attention_modules,
        quantized_attention=attention.quantized_attention,
        macs=report.macs,
        bops=report.bops,
        rel_bops=report.rel_bops,
        input_size=report.input_size,
        error=error,
    )


def format_inspection(found: Inspection) -> str:
    """A readable summary: counts per role and bits, the float modules, attention coverage, MACs."""
    by_role: dict[str, dict[int, int]] = {}
    for p in found.points:
        by_role.setdefault(p.role, {}).setdefault(p.bits, 0)
        by_role[p.role][p.bits] += 1
    lines = [f"recipe {found.recipe}: {len(found.points)} quantization points"]
    for role, counts in by_role.items():
        shown = ", ".join(f"{n} at {'float' if b == 32 else f'{b} bit'}" for b, n in sorted(counts.items()))
        lines.append(f"  {role:<7} {shown}")
    lines.append(
        f"attention: {found.quantized_attention} of {found.attention_modules} blocks with softmax and both "
        "matmuls quantized"
    )
    lines.append(f"float modules: {len(found.float_modules)}")
    lines += [f"  {f['name']} ({f['type']}): {f['why']}" for f in found.float_modules]
    lines.append(f"{found.macs:,} MACs per {found.input_size}x{found.input_size} image; rel. BOPs {found.rel_bops:.4f}")
    if found.error:
        lines.append(f"error: {found.error}")
    return "\n".join(lines)
