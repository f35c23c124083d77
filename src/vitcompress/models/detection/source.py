"""Where a detector comes from: ``det:swin`` / ``det:vit`` names, and float detector folders.

A name ``det:<backbone>`` builds :func:`build_detector` of ``DetectorConfig(backbone=<backbone>, **kwargs)``
(random weights, or ``checkpoint``'s). The detector records it as its ``vitcompress_source``
(``{"name": "det:swin", "kwargs": {...}}``), so a quantized detector saved by ``vitcompress.quantize.save``
rebuilds from its ``source.json`` as a classifier does. A float detector is saved by :func:`save_detector`
into a folder of ``detector.json`` (its config), ``model.safetensors`` and ``manifest.json``, which
``--model FOLDER`` loads (:func:`load_detector_folder`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

from torch import nn

from vitcompress.errors import CheckpointError, ConfigError
from vitcompress.models.checkpoint import load_weights, save_weights
from vitcompress.models.detection.config import BACKBONES, DetectorConfig
from vitcompress.models.detection.detector import build_detector, is_detector

PREFIX = "det:"
DETECTOR_FILE, WEIGHTS_FILE = "detector.json", "model.safetensors"


def is_detector_name(name: str) -> bool:
    """``name`` is a ``det:<backbone>`` model name."""
    return isinstance(name, str) and name.startswith(PREFIX)


def config_from_name(name: str, kwargs: dict | None = None) -> DetectorConfig:
    """The :class:`DetectorConfig` of ``det:<backbone>`` with ``kwargs`` (its other fields).

    Raises:
        ConfigError: an unknown backbone or field, or a bad value (one line, naming it).
    """
    backbone = name[len(PREFIX) :]
    if backbone not in BACKBONES:
        raise ConfigError(f"model: a detector is det:<backbone> with backbone one of {list(BACKBONES)}, got {name!r}")
    kwargs = dict(kwargs or {})
    known = {f.name for f in fields(DetectorConfig)} - {"backbone", "version"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(f"{name}: unknown detector argument(s) {unknown}; known: {sorted(known)}")
    return DetectorConfig(backbone=backbone, **kwargs)


def load_detector(name: str, checkpoint: str | Path | None = None, **kwargs) -> nn.Module:
    """The detector ``det:<backbone>`` with ``kwargs`` (DetectorConfig fields), in eval mode.

    Args:
        name: ``det:swin`` or ``det:vit``.
        checkpoint: weights (safetensors, or a torch file read with ``weights_only=True``); default random.
        **kwargs: other :class:`DetectorConfig` fields (``head``, ``image_size``, ...).
    """
    model = build_detector(config_from_name(name, kwargs))
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def save_detector(model: nn.Module, path: str | Path) -> Path:
    """Write a float detector built by :func:`build_detector` to folder ``path`` (see the module doc).

    The folder is written beside ``path`` and swapped into place complete.
    """
    from vitcompress.outputs import swap_into_place, write_manifest

    config = getattr(model, "detector_config", None)
    if not is_detector(model) or not isinstance(config, DetectorConfig):
        raise ConfigError("save_detector: the model is not a detector built by build_detector")
    path = Path(path)
    work = path.with_name(f".{path.name}.saving-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / DETECTOR_FILE).write_text(json.dumps(config.source(), indent=2) + "\n")
    save_weights(model, work / WEIGHTS_FILE, metadata={"format": "vitcompress-detector"})
    write_manifest(work, {"writer": "vitcompress.save_detector"})
    swap_into_place(work, path)
    return path


def is_detector_folder(path: str | Path) -> bool:
    """``path`` is a folder written by :func:`save_detector`."""
    return (Path(path) / DETECTOR_FILE).is_file()


def load_detector_folder(path: str | Path) -> nn.Module:
    """The float detector saved in ``path`` by :func:`save_detector`, in eval mode.

    Raises:
        CheckpointError: a missing or altered file, or a ``detector.json`` that names no detector.
    """
    from vitcompress.outputs import verify_manifest

    path = Path(path)
    verify_manifest(path)
    try:
        source = json.loads((path / DETECTOR_FILE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / DETECTOR_FILE}: {e}") from None
    if not isinstance(source, dict) or not is_detector_name(source.get("name")):
        raise CheckpointError(f"{path / DETECTOR_FILE} names no detector (det:<backbone>)")
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{path} is not a saved detector: {WEIGHTS_FILE} is missing")
    try:
        return load_detector(source["name"], path / WEIGHTS_FILE, **source.get("kwargs", {}))
    except ConfigError as e:
        raise CheckpointError(f"{path / DETECTOR_FILE}: {e}") from None


def load_zoo_detector(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """The reference detector ``name`` of :data:`~vitcompress.models.zoo.DETECTOR_ZOO`, in eval mode.

    Args:
        checkpoint: weights to load into the entry's architecture instead of its trained folder.

    Raises:
        CheckpointError: the detector is not trained yet (one line naming the command that trains it).
    """
    from vitcompress.models.zoo import DETECTOR_ZOO

    entry = DETECTOR_ZOO[name]
    if checkpoint is not None:
        return load_detector(f"{PREFIX}{entry.detector['backbone']}", checkpoint, **_kwargs(entry.detector))
    if not is_detector_folder(entry.folder):
        raise CheckpointError(
            f"{name} is not trained yet: train it with `{entry.train_command}` (resumable, about 1.5 hours of one "
            "CPU thread; docs/detection.md)"
        )
    return load_detector_folder(entry.folder)


def _kwargs(detector: dict) -> dict:
    return {k: v for k, v in detector.items() if k != "backbone"}
