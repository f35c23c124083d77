"""A timm ViT/DeiT or Swin forward pass as a list of steps, so the search can start at any block.

``network_steps(model)`` returns steps whose composition equals ``model(x)`` exactly (a test checks
it bit for bit): ViT = [embed, blocks.0, ..., blocks.L-1, head]; Swin = [embed, layers.0.downsample,
layers.0.blocks.0, ..., layers.3.blocks.1, head]. A candidate's fitness runs only the steps from its
block to the end, on cached block inputs (seed 002: the network in front of the block is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vitcompress.errors import UnsupportedModelError


@dataclass(frozen=True)
class Step:
    """One piece of the forward pass; ``block`` is set for transformer blocks (the search units)."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    block: nn.Module | None = None


def _vit_steps(model: nn.Module) -> list[Step]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))

    steps = [Step("embed", embed)]
    steps += [Step(f"blocks.{i}", blk, blk) for i, blk in enumerate(model.blocks)]
    steps.append(Step("head", lambda x: model.forward_head(model.norm(x))))
    return steps


def _swin_steps(model: nn.Module) -> list[Step]:
    steps = [Step("embed", model.patch_embed)]
    for s, stage in enumerate(model.layers):
        steps.append(Step(f"layers.{s}.downsample", stage.downsample))
        steps += [Step(f"layers.{s}.blocks.{j}", blk, blk) for j, blk in enumerate(stage.blocks)]
    steps.append(Step("head", lambda x: model.forward_head(model.norm(x))))
    return steps


def network_steps(model: nn.Module) -> list[Step]:
    """The model's forward pass as steps (timm ``VisionTransformer`` family or ``SwinTransformer``)."""
    if hasattr(model, "blocks") and hasattr(model, "_pos_embed") and hasattr(model, "forward_head"):
        return _vit_steps(model)
    if hasattr(model, "layers") and hasattr(model, "patch_embed") and hasattr(model, "forward_head") \
            and all(hasattr(s, "blocks") and hasattr(s, "downsample") for s in model.layers):
        return _swin_steps(model)
    raise UnsupportedModelError(f"Evol-Q supports timm VisionTransformer/DeiT and SwinTransformer models, "
                                f"got {type(model).__name__}")


def run_steps(steps: list[Step], start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
    """Apply ``steps[start:stop]`` to ``x``."""
    for step in steps[start:stop]:
        x = step.fn(x)
    return x
