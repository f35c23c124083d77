"""A detector's transformer and pyramid as a chain of steps (:class:`vitcompress.models.chain.Chain`).

Searches that rerun the network from one changed layer onward (F-LBQ's distortion curves) see a detector as
its backbone: normalisation + patch embedding, one step per transformer block (Swin: and per patch
merging), then the feature pyramid. The chain's output is the pyramid, every level flattened and
concatenated per image, (B, sum of C x H_l x W_l): the distortion of backbone features that the F-LBQ
paper allocates bits by on its detectors. The detection heads are not in the chain (they stay at their
uniform bits). Step names are module paths of the detector, so ``step_of("backbone.body.blocks.3.mlp.fc1")``
finds the step that runs a layer.

A Swin step's input and output are ``(x, stages)``: the running (B, H, W, C) map and the stage maps
already complete, which the pyramid takes at the end.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError

TARGETS = ("pyramid", "pre_logits")  # pre_logits: what a classifier's "backbone features" means, here the pyramid


def flat(levels: OrderedDict[str, torch.Tensor]) -> torch.Tensor:
    """Pyramid levels as one (B, N) tensor, the levels in order."""
    return torch.cat([f.flatten(1) for f in levels.values()], dim=1)


def _swin_steps(model: nn.Module) -> tuple[list[str], list]:
    backbone = model.backbone
    body = backbone.body

    def embed(x: torch.Tensor):
        return body.patch_embed(model.transform.normalize(x)), ()  # (B, H/4, W/4, C)

    def block(state, s: int, j: int):
        x, stages = state
        x = body.layers[s].blocks[j](x)
        if j == len(body.layers[s].blocks) - 1:  # the stage's output, as timm's forward_intermediates takes it
            stages = (*stages, x.permute(0, 3, 1, 2).contiguous())
        return x, stages

    names, steps = ["backbone.body.patch_embed"], [embed]
    for s, stage in enumerate(body.layers):
        names.append(f"backbone.body.layers.{s}.downsample")
        steps.append(lambda state, s=s: (body.layers[s].downsample(state[0]), state[1]))
        for j in range(len(stage.blocks)):
            names.append(f"backbone.body.layers.{s}.blocks.{j}")
            steps.append(lambda state, s=s, j=j: block(state, s, j))
    names.append("backbone.fpn")
    steps.append(lambda state: flat(backbone.pyramid(list(state[1]))))
    return names, steps


def _vit_steps(model: nn.Module) -> tuple[list[str], list]:
    backbone = model.backbone
    body = backbone.body
    grid: list[tuple[int, int]] = []  # the token grid of the images being run (set by the first step)

    def embed(x: torch.Tensor) -> torch.Tensor:
        grid[:] = [body.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))]
        return body.norm_pre(body.patch_drop(body._pos_embed(body.patch_embed(model.transform.normalize(x)))))

    def pyramid(x: torch.Tensor) -> torch.Tensor:
        h, w = grid[0]
        last = body.norm(x).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, H/16, W/16)
        return flat(backbone.pyramid(last))

    names, steps = ["backbone.body.patch_embed"], [embed]
    for i in range(len(body.blocks)):
        names.append(f"backbone.body.blocks.{i}")
        steps.append(lambda x, i=i: body.blocks[i](x))
    names.append("backbone.pyramid")
    steps.append(pyramid)
    return names, steps


def detector_chain(model: nn.Module, target: str = "pyramid", check: torch.Tensor | None = None):
    """The chain of a detector built by :func:`~vitcompress.models.detection.build_detector`.

    Args:
        model: the detector (float or prepared).
        target: ``pyramid`` (or ``pre_logits``, its synonym for callers written for classifiers).
        check: images in [0, 1]; if given, the chain's output must equal the backbone's own pyramid of the
            normalised images exactly.

    Raises:
        ConfigError: another target.
        UnsupportedModelError: the chain disagrees with the detector (a timm change it does not follow).
    """
    from vitcompress.models.chain import Chain

    if target not in TARGETS:
        raise ConfigError(f"target of a detector must be one of {list(TARGETS)} (its pyramid), got {target!r}")
    config = model.detector_config
    names, steps = _swin_steps(model) if config.backbone == "swin" else _vit_steps(model)
    chain = Chain(tuple(names), tuple(steps), "pyramid")
    if check is not None:
        with torch.no_grad():
            expected = flat(model.backbone(model.transform.normalize(check)))
            got = chain.run(check)
        if got.shape != expected.shape or not torch.equal(got, expected):
            raise UnsupportedModelError(
                f"the {config.backbone} detector's block chain does not reproduce its pyramid; this timm version "
                "is not supported"
            )
    return chain
