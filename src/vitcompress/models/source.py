"""``ModelSource``: the model a command works on, named the same way on every command."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.device import model_device, resolve_device
from vitcompress.errors import ConfigError
from vitcompress.models.registry import load_model
from vitcompress.models.timm_args import parse_model_args
from vitcompress.options import option
from vitcompress.validate import positive_int

log = logging.getLogger(__name__)
SHORTHANDS = ("num_classes", "in_chans", "img_size")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        model: a zoo name (see `vitcompress zoo list`), timm:<name>, hf:DIR (a Hugging Face ViT/DeiT/Swin image
            classifier saved with save_pretrained), or a folder written by compress
        checkpoint: local weights of a timm:<name> model (safetensors, or torch weights read with weights_only=True;
            a state_dict/model wrapper and DDP's module. prefix are taken care of)
        num_classes: classes of a timm:<name> model
        in_chans: input channels of a timm:<name> model
        img_size: input size of a timm:<name> model
        model_args: key=value arguments of a timm:<name> model, passed to timm.create_model (values parsed as
            JSON when they parse: depths=[2,2,6,2] mlp_ratio=2.0 global_pool=avg)
    """

    model: str
    checkpoint: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    img_size: int | None = None
    model_args: tuple[str, ...] = option((), metavar="KEY=VALUE")

    def __post_init__(self) -> None:
        for name in SHORTHANDS:
            positive_int(name, getattr(self, name), optional=True)
        if isinstance(self.model_args, str):  # one pair given as a plain string
            object.__setattr__(self, "model_args", (self.model_args,))
        object.__setattr__(self, "model_args", tuple(self.model_args))
        self.timm_kwargs()  # a malformed pair or an argument given twice fails here, before anything runs
        self._check_kind()

    def _check_kind(self) -> None:
        """Options that only a timm:<name> model takes, refused (one line) for a zoo name, an hf: or saved folder."""
        if self.model.startswith("timm:"):
            return
        zoo = self._is_zoo_name()
        if not (zoo or self.model.startswith("hf:") or Path(self.model).is_dir()):
            return  # an unknown name: load() says which names are known
        options = ("checkpoint", *SHORTHANDS, "model_args") if not zoo else (*SHORTHANDS, "model_args")
        given = [n for n in options if getattr(self, n)]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for timm:<name> models; {self.model!r} defines its own architecture"
            )

    def _is_zoo_name(self) -> bool:
        from vitcompress.models.zoo import ZOO

        return self.model in ZOO

    def timm_kwargs(self) -> dict[str, Any]:
        """The ``timm.create_model`` arguments: ``model_args`` parsed, plus the shorthands that are set."""
        kwargs = parse_model_args(self.model_args)
        for name in SHORTHANDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name in kwargs and kwargs[name] != value:
                raise ConfigError(f"{name} is given twice: {value} and model_args {name}={kwargs[name]}")
            kwargs[name] = value
        return kwargs

    @property
    def folder(self) -> Path | None:
        """The saved-model folder ``model`` names (``DIR/model`` of a job folder, or ``DIR``), else None."""
        path = Path(self.model)
        if not path.is_dir():
            return None
        return path / "model" if (path / "model").is_dir() else path

    def load(self, device: str | torch.device | None = None) -> nn.Module:
        """The model in eval mode: restored from a folder (quantized), or built float by :func:`load_model`.

        Args:
            device: where the model goes (``auto|cpu|cuda|cuda:N``, see
                :func:`~vitcompress.device.resolve_device`); None: where it was loaded (the CPU). Checked before
                the model is read.
        """
        target = None if device is None else resolve_device(device)
        model = self._load()
        if target is not None and model_device(model) != target:
            model = model.to(target)
            log.info("model %s on %s", self.model, target)
        return model

    def _load(self) -> nn.Module:
        folder = self.folder
        if folder is not None:
            from vitcompress.quantize import RECIPE_FILE, restore

            if (folder / "config.json").is_file() and not (folder / RECIPE_FILE).is_file():
                raise ConfigError(f"model: {folder} looks like a Hugging Face folder: name it hf:{self.model}")
            from vitcompress.models.detection.source import is_detector_folder, load_detector_folder

            if is_detector_folder(folder) and not (folder / RECIPE_FILE).is_file():  # a float detector
                return load_detector_folder(folder)
            return restore(folder)
        kwargs = self.timm_kwargs() if self.model.startswith("timm:") else {}
        if self.checkpoint is not None:
            kwargs["checkpoint"] = self.checkpoint
        return load_model(self.model, **kwargs)
