"""Replacing a timm model's layers with quantized ones, driven by a Recipe.

A registry maps each known float module type to a converter, so supporting a new layer type adds
an entry here rather than a branch in ``quantize_``. Quantization points are named
``<module path>.<point>``: ``blocks.3.attn.qkv.weight``, ``blocks.3.attn.qkv.input``,
``blocks.3.attn.q`` / ``.k`` / ``.v`` / ``.probs``, ``blocks.3.norm1.input``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from timm.layers import Attention
from timm.layers import LayerNorm as TimmLayerNorm
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitcompress.config import Recipe
from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.nn.attention import ATTN_POINTS, QuantAttention, QuantWindowAttention
from vitcompress.nn.linear import QuantConv2d, QuantLayerNorm, QuantLinear
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
# modules that hold parameters directly but need no conversion (containers of embeddings, tokens)
_PASSIVE_PARAM_OWNERS = ("VisionTransformer", "SwinTransformer", "VisionTransformerDistilled", "LayerScale")


def quantization_points(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """(point name, quantizer) of every quantization point of a prepared model, in module order."""
    for path, module in model.named_modules():
        if isinstance(module, Quantizer):
            owner, attr = path.rsplit(".", 1) if "." in path else ("", path)
            yield f"{owner}.{attr.removesuffix('_quantizer')}" if owner else attr.removesuffix("_quantizer"), module


def _unknown_layers(model: nn.Module) -> list[str]:
    """Modules with their own parameters (or attention-like names) that no converter knows."""
    unknown = []
    for path, m in model.named_modules():
        if type(m) in CONVERTERS or isinstance(m, (*QUANT_TYPES, Quantizer)):
            continue
        owns_params = any(True for _ in m.parameters(recurse=False))
        looks_like_attention = "attention" in type(m).__name__.lower() or "attn" in type(m).__name__.lower()
        if (owns_params and type(m).__name__ not in _PASSIVE_PARAM_OWNERS) or looks_like_attention:
            unknown.append(f"{path or '<root>'} ({type(m).__name__})")
    return unknown


def _convert(module: nn.Module, recipe: Recipe, prefix: str) -> None:
    for child_name, child in list(module.named_children()):
        path = f"{prefix}.{child_name}" if prefix else child_name
        converter = CONVERTERS.get(type(child))
        if converter is not None:
            child = converter(child, recipe, path)
            setattr(module, child_name, child)
            for attr, qz in child.named_children():
                if isinstance(qz, Quantizer):  # role decides which recipe default applies
                    point = attr.removesuffix("_quantizer")
                    qz.role = "norm" if isinstance(child, QuantLayerNorm) else POINT_ROLES[point]
        if not isinstance(child, Quantizer):
            _convert(child, recipe, path)


def prepare(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Replace every known layer of ``model`` (in place) with its quantized version.

    Raises:
        UnsupportedModelError: the model has layers no converter knows (listed), unless
            ``recipe.unknown_layers == "float"``, which leaves them in float and logs them.
        ConfigError: an override pattern matches no quantization point.
    """
    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise UnsupportedModelError("model is already quantized: prepare a float model")
    unknown = _unknown_layers(model)
    if unknown and recipe.unknown_layers == "error":
        raise UnsupportedModelError(
            f"layers vitcompress does not know how to quantize: {', '.join(unknown[:8])}"
            f"{' …' if len(unknown) > 8 else ''}; set recipe unknown_layers: float to leave them in float"
        )
    if unknown:
        log.warning("leaving %d unknown layers in float: %s", len(unknown), ", ".join(unknown))
    _convert(model, recipe, "")
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
