"""A timm ViT/DeiT or Swin as an ordered chain of steps, so work can restart at any block.

Searches that change one layer or block at a time (F-LBQ distortion curves, Evol-Q's block-wise
search of quantization scales) need the network's output for many variants of one layer. Running
from the input every time repeats the unchanged front of the network; a :class:`Chain` caches each
step's input once and reruns only the steps from the changed layer's onward.

Steps:

- ViT/DeiT (``VisionTransformer``): ``patch_embed`` (patch embedding, class/position tokens,
  ``norm_pre``), one step per ``blocks.i``, then ``norm`` (final norm + pooling, and the classifier
  when the target is ``logits``).
- Swin (``SwinTransformer``): ``patch_embed``, then per stage ``layers.s.downsample`` and one step per
  ``layers.s.blocks.j``, then ``norm`` (final norm + pooling [+ classifier]).

:func:`model_chain` checks on the first batch that the composed steps give exactly the model's own
output, so a timm change that the chain does not follow is an error, not a silent wrong answer.
:meth:`Chain.block_steps` names the steps that run one transformer block (the units of a block-wise
search).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError

TARGETS = ("pre_logits", "logits")
Step = Callable[[torch.Tensor], torch.Tensor]
_BLOCK = re.compile(r"(layers\.\d+\.)?blocks\.\d+")  # a ViT block or a Swin stage's block


@dataclass(frozen=True)
class Chain:
    """The ordered steps of a model; ``names[i]`` is the module path that step ``i`` runs.

    Attributes:
        names: step names (module paths such as ``blocks.3`` or ``layers.1.downsample``).
        steps: the callables; they look the modules up on the model at call time, so a chain stays
            valid when layers are replaced in place (``prepare``).
        target: ``pre_logits`` (backbone features) or ``logits``.
    """

    names: tuple[str, ...]
    steps: tuple[Step, ...]
    target: str

    def step_of(self, module_path: str) -> int | None:
        """Index of the step that runs ``module_path`` (None: no step does, e.g. the classifier head)."""
        for i, name in enumerate(self.names):
            if module_path == name or module_path.startswith(name + "."):
                return i
        return None

    def block_steps(self) -> list[int]:
        """Indices of the steps that run one transformer block (``blocks.i``, ``layers.s.blocks.j``)."""
        return [i for i, name in enumerate(self.names) if _BLOCK.fullmatch(name)]

    def run(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run steps ``start..stop-1`` (default: to the end) on ``x`` (the input of step ``start``)."""
        for step in self.steps[start:stop]:
            x = step(x)
        return x

    def inputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The input of every step for images ``x`` and the final output."""
        cached = []
        for step in self.steps:
            cached.append(x)
            x = step(x)
        return cached, x


def _vit_steps(m: nn.Module, target: str) -> tuple[list[str], list[Step]]:
    def embed(x: torch.Tensor) -> torch.Tensor:
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    names, steps = ["patch_embed"], [embed]
    for i in range(len(m.blocks)):
        names.append(f"blocks.{i}")
        steps.append(lambda x, i=i: m.blocks[i](x))
    names.append("norm")
    steps.append(lambda x: m.forward_head(m.norm(x), pre_logits=target == "pre_logits"))
    return names, steps


def _swin_steps(m: nn.Module, target: str) -> tuple[list[str], list[Step]]:
    names, steps = ["patch_embed"], [lambda x: m.patch_embed(x)]
    for s, stage in enumerate(m.layers):
        names.append(f"layers.{s}.downsample")
        steps.append(lambda x, s=s: m.layers[s].downsample(x))
        for j in range(len(stage.blocks)):
            names.append(f"layers.{s}.blocks.{j}")
            steps.append(lambda x, s=s, j=j: m.layers[s].blocks[j](x))
    names.append("norm")
    steps.append(lambda x: m.forward_head(m.norm(x), pre_logits=target == "pre_logits"))
    return names, steps


def _captured(module: nn.Module, run: Callable[[], object]) -> torch.Tensor:
    """The output of ``module`` during ``run()`` (its last call)."""
    got: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: got.append(out))
    try:
        run()
    finally:
        handle.remove()
    if not got or not isinstance(got[-1], torch.Tensor):
        raise UnsupportedModelError(f"target module {type(module).__name__} did not return a tensor")
    return got[-1]


def _until_module(names: list[str], steps: list[Step], module: nn.Module, target: str) -> tuple[list[str], list[Step]]:
    """Steps up to the one that runs ``module``; that step returns the module's output."""
    k = next((i for i, n in enumerate(names) if target == n or target.startswith(n + ".")), None)
    if k is None or k == len(names) - 1:  # the last step: pooling, head
        raise ConfigError(f"target module {target!r} must be inside a block of the chain {names[:-1]}")
    last = steps[k]
    return names[: k + 1], steps[:k] + [lambda x: _captured(module, lambda: last(x))]


def model_chain(
    model: nn.Module, target: str = "pre_logits", check: torch.Tensor | None = None, *, distilled: bool = False
) -> Chain:
    """The chain of a timm ViT/DeiT or Swin.

    Args:
        model: a timm ``VisionTransformer`` or ``SwinTransformer`` (float or prepared).
        target: ``pre_logits`` (backbone features, the input of the classifier), ``logits``, or the
            name of a module inside a block (its output; the chain then stops at that block).
        check: images; if given, the chain's output must equal the model's (exactly).
        distilled: also accept a DeiT with a distillation token (its ``forward_head`` averages the
            class and distillation heads). Off by default: a caller that treats the classifier as
            one ``head`` layer must not see the second one.

    Raises:
        ConfigError: unknown ``target``.
        UnsupportedModelError: another architecture, or the chain disagrees with the model.
    """
    if hasattr(model, "detector_config"):  # a detector: its transformer and feature pyramid
        from vitcompress.models.detection.chain import detector_chain

        return detector_chain(model, target, check)
    module = None
    if target not in TARGETS:
        module = dict(model.named_modules()).get(target) if target else None
        if module is None:
            raise ConfigError(f"target must be one of {list(TARGETS)} or a module name of the model, got {target!r}")
    if (
        hasattr(model, "blocks")
        and hasattr(model, "_pos_embed")
        and (distilled or getattr(model, "dist_token", None) is None)
    ):
        names, steps = _vit_steps(model, target)
    elif hasattr(model, "layers") and all(hasattr(s, "blocks") and hasattr(s, "downsample") for s in model.layers):
        names, steps = _swin_steps(model, target)
    else:
        raise UnsupportedModelError(
            f"{type(model).__name__}: block-wise search supports timm VisionTransformer/DeiT (no distillation "
            f"token) and SwinTransformer"
        )
    if module is not None:
        names, steps = _until_module(names, steps, module, target)
    chain = Chain(tuple(names), tuple(steps), target)
    if check is not None:
        with torch.no_grad():
            if module is None:
                expected = model.forward_head(model.forward_features(check), pre_logits=target == "pre_logits")
            else:
                expected = _captured(module, lambda: model(check))
            got = chain.run(check)
        if got.shape != expected.shape or not torch.equal(got, expected):
            diff = (
                f"max difference {(got - expected).abs().max().item():.3g}"
                if got.shape == expected.shape
                else f"shape {tuple(got.shape)} vs {tuple(expected.shape)}"
            )
            raise UnsupportedModelError(
                f"{type(model).__name__}: the block chain does not reproduce the model's "
                f"{target} ({diff}); this timm version is not supported"
            )
    return chain
