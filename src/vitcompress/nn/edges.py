"""The model's first and last layers, named by what they are: ``@stem`` and ``@head`` in override patterns.

Every preset keeps the first and the last layer at 8 bit (as FQ-ViT, PTQ4ViT and RepQ-ViT do). Which
modules those are depends on the model: ``patch_embed.proj`` and ``head`` in a timm ViT, ``stem.conv1``
in LeViT, ``stem.in_conv.conv`` in EfficientViT, ``head.fc`` in Swin, ``head`` and ``head_dist`` in a
distilled DeiT. A recipe override pattern that starts with ``@stem`` or ``@head`` is resolved against the
model it is applied to:

- ``@stem``: the module timm's ``pretrained_cfg["first_conv"]`` names (each, when it names several);
  without one, the first ``nn.Conv2d`` / ``nn.Linear`` registered in the model;
- ``@head``: the module(s) ``get_classifier()`` returns (a tuple for distilled models); without that
  method, the last ``nn.Linear`` registered in the model. A detector names its heads itself
  (``vitcompress_heads``): every layer after the transformer, i.e. the feature pyramid and the detection heads.

The rest of the pattern follows the module name: ``@stem.*`` becomes ``patch_embed.proj.*``. An edge the
model does not have (``num_classes=0``: the classifier is an ``Identity``) is dropped from the recipe.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from torch import nn

from vitcompress.config import Recipe

log = logging.getLogger(__name__)

STEM, HEAD = "@stem", "@head"
HEADS_ATTR = "vitcompress_heads"  # names of the modules a model calls its heads (set by build_detector)
EDGES = (STEM, HEAD)
_WEIGHTED = (nn.Linear, nn.Conv2d)


def _first_conv_names(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("first_conv") if isinstance(cfg, dict) else None
    names = [names] if isinstance(names, str) else list(names or ())
    modules = dict(model.named_modules())
    return [n for n in names if isinstance(modules.get(n), nn.Module)]


def stem_modules(model: nn.Module) -> list[str]:
    """Names of the model's first layer(s): timm's ``first_conv``, else the first registered conv/linear."""
    named = _first_conv_names(model)
    if named:
        return named
    first = next((n for n, m in model.named_modules() if isinstance(m, _WEIGHTED)), None)
    return [first] if first is not None else []


def head_modules(model: nn.Module) -> list[str]:
    """Names of the model's classifier(s): the modules a model names as its heads (``vitcompress_heads``: a
    detector's pyramid and detection heads), else ``get_classifier()`` (timm), else the last registered linear."""
    named = getattr(model, HEADS_ATTR, None)
    if isinstance(named, (tuple, list)):
        modules = dict(model.named_modules())
        return [n for n in named if n in modules]
    get = getattr(model, "get_classifier", None)
    if callable(get):
        heads = get()
        heads = heads if isinstance(heads, (tuple, list)) else (heads,)
        ids = {id(h) for h in heads if isinstance(h, nn.Module) and any(True for _ in h.parameters())}
        return [n for n, m in model.named_modules() if id(m) in ids]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def edge_modules(model: nn.Module) -> dict[str, list[str]]:
    """``{"@stem": [names], "@head": [names]}`` for ``model``."""
    return {STEM: stem_modules(model), HEAD: head_modules(model)}


def _edge_of(pattern: str) -> str | None:
    return next((e for e in EDGES if pattern == e or pattern.startswith(e + ".") or pattern.startswith(e + "*")), None)


def resolve_edges(recipe: Recipe, model: nn.Module) -> Recipe:
    """``recipe`` with every ``@stem``/``@head`` override pattern replaced by the model's module names.

    The override keeps its place (precedence among globs is unchanged); an edge resolved to several modules
    becomes several overrides at that place; an edge the model lacks is dropped (logged). Recipes without
    symbolic patterns are returned as they are.
    """
    if not any(_edge_of(p) for p, _ in recipe.overrides):
        return recipe
    edges = edge_modules(model)
    overrides = []
    for pattern, changes in recipe.overrides:
        edge = _edge_of(pattern)
        if edge is None:
            overrides.append((pattern, changes))
            continue
        if not edges[edge]:
            log.info("override %r: the model has no %s layer; skipped", pattern, edge[1:])
        overrides += [(name + pattern[len(edge) :], changes) for name in edges[edge]]
    return replace(recipe, overrides=tuple(overrides))
