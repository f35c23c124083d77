"""``load_model``: the zoo by name, or any timm model with local weights (``timm:<name>``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from vitcompress.data.datasets import InputSpec
from vitcompress.errors import CheckpointError, UnsupportedModelError
from vitcompress.models.checkpoint import load_weights
from vitcompress.models.zoo import ZOO, build_zoo_model

log = logging.getLogger(__name__)


def list_models() -> list[str]:
    """Names of the reference models shipped with vitcompress."""
    return sorted(ZOO)


def read_manifest(name: str) -> dict:
    """The manifest of a shipped reference model (architecture, recipe, accuracy, MACs)."""
    entry = ZOO[name]
    if not entry.manifest.is_file():
        raise CheckpointError(f"no manifest {entry.manifest}: train it with `vitcompress zoo train {name}`")
    return json.loads(entry.manifest.read_text())


def load_model(
    name: str,
    checkpoint: str | Path | None = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a model in eval mode.

    Args:
        name: a zoo name (see :func:`list_models`) or ``"timm:<model_name>"`` for any timm model.
        checkpoint: local weights (``.safetensors``, or a torch file read with ``weights_only=True``).
            For zoo models, defaults to the shipped checkpoint.
        num_classes, in_chans: passed to ``timm.create_model`` for ``timm:`` models.
        pretrained: only for ``timm:`` models; downloads from the hub. Off unless asked for.
        **kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``).
    """
    if name in ZOO:
        model = build_zoo_model(name)
        path = Path(checkpoint) if checkpoint else ZOO[name].checkpoint
        if not path.is_file():
            raise CheckpointError(
                f"checkpoint {path} for {name!r} not found: train it with `vitcompress zoo train {name}`"
            )
        load_weights(model, path)
        model.vitcompress_source = {"name": name}
        return model.eval()
    if name.startswith("timm:"):
        import timm

        arch = name[len("timm:") :]
        if arch not in timm.list_models():
            raise UnsupportedModelError(f"timm has no model {arch!r} (see timm.list_models())")
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        extra.update(kwargs)
        model = timm.create_model(arch, pretrained=pretrained, **extra)
        if checkpoint is not None:
            load_weights(model, checkpoint)
        model.vitcompress_source = {"name": name, "kwargs": extra}
        return model.eval()
    raise UnsupportedModelError(
        f"unknown model {name!r}: known names are {list_models()}, or 'timm:<name>' for any timm model"
    )


def model_from_source(source: dict, weights: bool = True) -> nn.Module:
    """Rebuild the float model described by a ``vitcompress_source`` dict (see ``save``).

    With ``weights=False`` the architecture is built with random weights (they are about to be
    overwritten by a saved state dict), so a zoo checkpoint need not exist.
    """
    name = source.get("name")
    if name in ZOO and not weights:
        model = build_zoo_model(name)
        model.vitcompress_source = {"name": name}
        return model.eval()
    return load_model(name, **source.get("kwargs", {}))


def input_spec_of(model: nn.Module) -> InputSpec:
    """The input a timm ViT/Swin expects, read from its patch embedding."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "img_size"):
        raise UnsupportedModelError(f"{type(model).__name__} has no timm patch_embed; cannot infer its input")
    size = pe.img_size[0] if isinstance(pe.img_size, (tuple, list)) else int(pe.img_size)
    in_chans = pe.proj.in_channels
    return InputSpec(img_size=int(size), in_chans=int(in_chans))
