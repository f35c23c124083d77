"""Replacing a model's layers with quantized ones, driven by a Recipe.

A registry maps each known float module type to a converter (linear, conv, LayerNorm, timm's
``Attention`` and Swin's ``WindowAttention``); any other module whose code runs attention ops or calls
a child linear through ``F.linear`` becomes generic quantized attention (:mod:`vitcompress.nn.generic`,
found by one traced forward). Quantization points are named ``<module path>.<point>``:
``blocks.3.attn.qkv.weight``, ``blocks.3.attn.qkv.input``, ``blocks.3.attn.q`` / ``.k`` / ``.v`` /
``.probs`` (timm), ``blocks.3.attn.matmul0.a`` / ``softmax0.out`` / ``sdpa0.q`` (generic),
``blocks.3.norm1.input``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from timm.layers import Attention
from timm.layers import LayerNorm as TimmLayerNorm
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitcompress.config import Recipe
from vitcompress.device import model_device
from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.nn.attention import ATTN_POINTS, QuantAttention, QuantWindowAttention
from vitcompress.nn.edges import resolve_edges
from vitcompress.nn.generic import to_generic
from vitcompress.nn.linear import QuantConv2d, QuantLayerNorm, QuantLinear
from vitcompress.nn.ops import example_input_for, trace_ops
from vitcompress.nn.plan import Plan, make_plan
from vitcompress.nn.summary import (  # noqa: F401  (public here: inspect, reports and the export use them)
    FLOAT_ATTENTION_ATTR,
    FLOAT_ATTR,
    AttentionSummary,
    FloatModule,
    attention_summary,
    float_modules,
)
from vitcompress.quant import Quantizer

log = logging.getLogger(__name__)

Converter = Callable[[nn.Module, Recipe, str], nn.Module]

# role of each quantizer attribute, by quantized module type
POINT_ROLES = {"weight": "weight", "input": "act", "q": "qkv", "k": "qkv", "v": "qkv", "probs": "probs"}


def _linear(m: nn.Module, r: Recipe, name: str) -> nn.Module:
    cls = QuantConv2d if isinstance(m, nn.Conv2d) else QuantLinear
    return cls.from_float(m, r.spec_for(f"{name}.weight", "weight"), r.spec_for(f"{name}.input", "act"), name)


def _norm(m: nn.Module, r: Recipe, name: str) -> nn.Module:
    return QuantLayerNorm.from_float(m, r.spec_for(f"{name}.input", "norm"), name)


def _attention(cls: type) -> Converter:
    def convert(m: nn.Module, r: Recipe, name: str) -> nn.Module:
        role = {"q": "qkv", "k": "qkv", "v": "qkv", "probs": "probs"}
        return cls.from_float(m, {p: r.spec_for(f"{name}.{p}", role[p]) for p in ATTN_POINTS}, name)

    return convert


CONVERTERS: dict[type, Converter] = {
    nn.Linear: _linear,
    nn.Conv2d: _linear,
    nn.LayerNorm: _norm,
    TimmLayerNorm: _norm,  # same math as nn.LayerNorm (timm's fast-norm path off by default)
    Attention: _attention(QuantAttention),
    WindowAttention: _attention(QuantWindowAttention),
}
QUANT_TYPES = (QuantLinear, QuantConv2d, QuantLayerNorm, QuantAttention, QuantWindowAttention)


def quantization_points(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """(point name, quantizer) of every quantization point of a prepared model, in module order."""
    for path, module in model.named_modules():
        if isinstance(module, Quantizer):
            owner, attr = path.rsplit(".", 1) if "." in path else ("", path)
            yield f"{owner}.{attr.removesuffix('_quantizer')}" if owner else attr.removesuffix("_quantizer"), module


def _convert(module: nn.Module, recipe: Recipe, prefix: str, plan: Plan) -> None:
    for child_name, child in list(module.named_children()):
        path = f"{prefix}.{child_name}" if prefix else child_name
        converter = CONVERTERS.get(type(child))
        if converter is None and path in plan.generic:
            child = to_generic(child, *plan.generic[path], recipe, path)
            setattr(module, child_name, child)
        elif converter is not None:
            child = converter(child, recipe, path)
            setattr(module, child_name, child)
            for attr, qz in child.named_children():
                if isinstance(qz, Quantizer):  # role decides which recipe default applies
                    point = attr.removesuffix("_quantizer")
                    qz.role = "norm" if isinstance(child, QuantLayerNorm) else POINT_ROLES[point]
        if not isinstance(child, Quantizer):
            _convert(child, recipe, path, plan)


def prepare(model: nn.Module, recipe: Recipe, example_input: torch.Tensor | None = None) -> nn.Module:
    """Replace every known layer of ``model`` (in place) with its quantized version.

    One forward on ``example_input`` (default: a zero image of the size the model declares, see
    :func:`~vitcompress.nn.ops.example_input_for`) finds the attention ops and the linears called through
    ``F.linear`` (:mod:`vitcompress.nn.generic`) and the modules nothing would quantize.

    Raises:
        UnsupportedModelError: modules with weights or activation matmuls that nothing quantizes (all
            named), unless ``recipe.unknown_layers == "float"``, which leaves them in float, logs them
            and lists them in :func:`float_modules`; or the forward fails on the example input.
        ConfigError: an override pattern matches no quantization point.
    """
    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise UnsupportedModelError("model is already quantized: prepare a float model")
    recipe = resolve_edges(recipe, model)
    sites = trace_ops(model, example_input_for(model) if example_input is None else example_input)
    plan = make_plan(model, sites, tuple(CONVERTERS))
    floats = list(plan.floats.values())
    if floats and recipe.unknown_layers == "error":
        listed = "; ".join(f"{f.name or '<model>'} ({f.type}: {f.why})" for f in floats)
        raise UnsupportedModelError(
            f"modules nothing quantizes: {listed}; set recipe unknown_layers: float to leave them in float"
        )
    if floats:
        log.warning("leaving %d modules in float: %s", len(floats), ", ".join(f.name or "<model>" for f in floats))
    device = model_device(model)
    _convert(model, recipe, "", plan)
    for m in model.modules():  # quantizers are built on the CPU: they go where the model is
        if isinstance(m, Quantizer):
            m.to(device)
    setattr(model, FLOAT_ATTR, tuple(floats))
    setattr(model, FLOAT_ATTENTION_ATTR, tuple(plan.float_attention))
    names = [name for name, _ in quantization_points(model)]
    for pattern, _ in recipe.overrides:
        if not any(recipe.matching_override(n) == pattern for n in names):
            raise ConfigError(
                f"override pattern {pattern!r} matches no quantization point of this model (e.g. {names[:3]})"
            )
    return model


def set_quantizers(model: nn.Module, enabled: bool, roles: tuple[str, ...] | None = None) -> None:
    """Enable or disable quantizers, optionally only those of some roles (``weight``, ``act``, ...)."""
    for name, qz in quantization_points(model):
        if roles is None or point_role(name, qz) in roles:
            qz.enabled = enabled


def point_role(name: str, qz: Quantizer) -> str:
    """Role of a quantization point: weight, act, qkv, probs or norm."""
    role = getattr(qz, "role", None)
    if role is None:
        raise UnsupportedModelError(f"quantizer {name} was not created by vitcompress.nn.convert")
    return role
