"""``ModelSource``: the model a command works on, named the same way on every command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitcompress.models.registry import load_model
from vitcompress.validate import positive_int


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from.

    Attributes:
        model: a zoo name (see `vitcompress zoo list`), timm:<name>, or a folder written by compress
        checkpoint: local weights of a timm:<name> model (safetensors, or torch weights read with weights_only=True)
        num_classes: classes of a timm:<name> model
        in_chans: input channels of a timm:<name> model
        img_size: input size of a timm:<name> model
    """

    model: str
    checkpoint: str | None = None
    num_classes: int | None = None
    in_chans: int | None = None
    img_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_classes", "in_chans", "img_size"):
            positive_int(name, getattr(self, name), optional=True)

    @property
    def folder(self) -> Path | None:
        """The saved-model folder ``model`` names (``DIR/model`` of a job folder, or ``DIR``), else None."""
        path = Path(self.model)
        if not path.is_dir():
            return None
        return path / "model" if (path / "model").is_dir() else path

    def load(self) -> nn.Module:
        """The model in eval mode: restored from a folder (quantized), or built float by :func:`load_model`."""
        folder = self.folder
        if folder is not None:
            from vitcompress.quantize import restore

            return restore(folder)
        kwargs = {
            k: v
            for k, v in (
                ("checkpoint", self.checkpoint),
                ("num_classes", self.num_classes),
                ("in_chans", self.in_chans),
                ("img_size", self.img_size),
            )
            if v is not None
        }
        return load_model(self.model, **kwargs)
