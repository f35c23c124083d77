"""``load_model``: the zoo by name, any timm model with local weights (``timm:<name>``), or a Hugging Face
ViT/DeiT/Swin image classifier folder (``hf:<folder>``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from torch import nn

from vitcompress.data.datasets import InputSpec
from vitcompress.errors import CheckpointError, ConfigError, UnsupportedModelError
from vitcompress.models.checkpoint import load_weights
from vitcompress.models.timm_args import as_timm_value, create_timm_model
from vitcompress.models.zoo import DETECTOR_ZOO, ZOO, build_zoo_model, zoo_names

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
        name: a zoo name (see :func:`list_models`), ``"timm:<model_name>"`` for any timm model, or
            ``"hf:<folder>"`` for a Hugging Face transformers ViT/DeiT/Swin image classifier saved with
            ``save_pretrained`` (converted to the equivalent timm model, see :mod:`vitcompress.models.hf`).
        checkpoint: local weights (``.safetensors``, or a torch file read with ``weights_only=True``).
            For zoo models, defaults to the shipped checkpoint.
        num_classes, in_chans: passed to ``timm.create_model`` for ``timm:`` models.
        pretrained: only for ``timm:`` models; downloads from the hub. Off unless asked for.
        **kwargs: extra ``timm.create_model`` arguments (e.g. ``img_size``, ``depths``), checked against the
            model class: an unknown one raises ConfigError naming it and the accepted ones.
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
        extra = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        extra.update(kwargs)
        return _load_timm(name, checkpoint, extra, pretrained)
    if name.startswith("hf:"):
        from vitcompress.models.hf import load_hf

        if checkpoint is not None or num_classes is not None or in_chans is not None or kwargs or pretrained:
            raise ConfigError(
                f"{name}: a Hugging Face folder brings its own weights and config.json; "
                "checkpoint, num_classes, in_chans and model arguments do not apply"
            )
        return load_hf(name[len("hf:") :])
    if name in DETECTOR_ZOO:  # a reference detector: its trained folder in the zoo, or a one-line error
        from vitcompress.models.detection.source import load_zoo_detector

        return load_zoo_detector(name, checkpoint)
    if name.startswith("det:"):  # a detector on a timm backbone (vitcompress.models.detection)
        from vitcompress.models.detection.source import load_detector

        extra = {k: v for k, v in (("num_classes", num_classes), ("in_chans", in_chans)) if v is not None}
        return load_detector(name, checkpoint, **extra, **kwargs)
    raise UnsupportedModelError(
        f"unknown model {name!r}: known names are {zoo_names()}, 'timm:<name>' for any timm model, "
        "or 'hf:<folder>' for a Hugging Face ViT/DeiT/Swin image classifier"
    )


def _load_timm(name: str, checkpoint: str | Path | None, kwargs: dict, pretrained: bool) -> nn.Module:
    arch = name[len("timm:") :]
    if pretrained:  # the hub download path (never taken by the command line)
        import timm

        model = timm.create_model(arch, pretrained=True, **{k: as_timm_value(v) for k, v in kwargs.items()})
    else:
        model = create_timm_model(arch, kwargs)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    try:  # recorded as source.json stores them (tuples as lists), so that a saved folder rebuilds the model
        model.vitcompress_source = {"name": name, "kwargs": json.loads(json.dumps(kwargs))}
    except (TypeError, ValueError):  # a Python object (a norm_layer class, ...): save() writes no source.json
        log.warning("%s: model arguments %s are not JSON; restore(path, model) will need the model", name, kwargs)
    return model.eval()


def model_from_source(source: dict, weights: bool = True) -> nn.Module:
    """Rebuild the float model described by a ``vitcompress_source`` dict (see ``save``).

    With ``weights=False`` the architecture is built with random weights (they are about to be
    overwritten by a saved state dict), so a zoo checkpoint or the original Hugging Face folder need
    not exist (an ``hf:`` source carries its architecture and preprocessing).
    """
    name = source.get("name")
    if not isinstance(name, str):
        raise CheckpointError(f"source.json names no model: {source!r}")
    if name in ZOO and not weights:
        model = build_zoo_model(name)
        model.vitcompress_source = {"name": name}
        return model.eval()
    if name.startswith("hf:"):
        from vitcompress.models.hf import model_from_hf_source

        return model_from_hf_source(source, weights=weights)
    return load_model(name, **source.get("kwargs", {}))


def input_spec_of(model: nn.Module) -> InputSpec:
    """The input a timm ViT/Swin expects, read from its patch embedding."""
    pe = getattr(model, "patch_embed", None)
    if pe is None or not hasattr(pe, "img_size"):
        raise UnsupportedModelError(f"{type(model).__name__} has no timm patch_embed; cannot infer its input")
    size = pe.img_size[0] if isinstance(pe.img_size, (tuple, list)) else int(pe.img_size)
    in_chans = pe.proj.in_channels
    return InputSpec(img_size=int(size), in_chans=int(in_chans))
