"""A model's own preprocessing: :class:`Preprocess`, resolved from the model, overridable field by field.

:func:`resolve_preprocess` takes the first of:

1. ``model.vitcompress_preprocess`` (:data:`PREPROCESS_ATTR`), a dict the model loader attaches (a
   Hugging Face model: from its image-processor config): ``input_size`` (C, H, W), ``mean``, ``std``,
   ``crop_pct``, ``interpolation`` and optionally ``crop_mode`` (timm's: ``center`` resizes the short
   side to size / crop_pct then centre-crops; ``squash`` resizes both sides, as Hugging Face processors do).
2. A zoo model (``vitcompress_source["name"]`` is a zoo name): the Fashion-MNIST exact-pad path
   (:func:`~vitcompress.data.datasets.fit_to_model`: an image smaller by an even number of pixels is
   zero-padded, anything else resized bilinearly; mean 0.2860, std 0.3530), bit for bit as before.
3. timm: ``resolve_data_config({}, model=model)`` (the model's ``pretrained_cfg``, else timm's ImageNet
   defaults), with the channel count and image size read from the model's patch embedding, which is
   the true input (``pretrained_cfg`` keeps 224 px when a model is built with another ``img_size``).
   A 3-value mean/std for a 1-channel model becomes the average of the three.

The evaluation transform is then timm's ``create_transform(**cfg, is_training=False)`` (resize,
centre crop, to tensor, per-channel normalisation) after converting the image to the model's channel
count (``"L"`` for 1 channel, ``"RGB"`` for 3; 16-bit grayscale is scaled to 8 bits first).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from vitcompress.data.datasets import FMNIST_MEAN, FMNIST_STD, InputSpec, fit_to_model, random_crop_flip
from vitcompress.errors import ConfigError, UnsupportedModelError
from vitcompress.models.inputs import declared_channels, declared_size
from vitcompress.validate import number, one_of, positive, positive_int

log = logging.getLogger(__name__)

PREPROCESS_ATTR = "vitcompress_preprocess"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash", "border")
MODES = {1: "L", 3: "RGB"}
# Training augmentation of image folders (timm's RandomResizedCrop defaults) and the zoo's crop padding.
RRC_SCALE, RRC_RATIO, FLIP_P = (0.08, 1.0), (3 / 4, 4 / 3), 0.5


@dataclass(frozen=True)
class Preprocess:
    """How images become the model's input.

    Attributes:
        input_size: (channels, height, width) of the model's input.
        mean, std: per-channel normalisation (one value per channel).
        crop_pct: images are resized to size / crop_pct, then centre-cropped to size (1: no crop; above 1
            timm pads the border).
        interpolation: resize interpolation (one of :data:`INTERPOLATIONS`).
        crop_mode: timm's crop mode (``center``, ``squash`` or ``border``).
        exact_pad: the zoo's Fashion-MNIST path (:func:`~vitcompress.data.datasets.fit_to_model`);
            crop_pct, interpolation and crop_mode do not apply to it.
    """

    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    crop_mode: str = "center"
    exact_pad: bool = False

    def __post_init__(self) -> None:
        if len(self.input_size) != 3:
            raise ConfigError(f"input_size must be (channels, height, width), got {self.input_size!r}")
        for name, v in zip(("channels", "height", "width"), self.input_size):
            positive_int(f"input_size {name}", v)
        if self.input_size[0] not in MODES:
            raise UnsupportedModelError(
                f"the model takes {self.input_size[0]} input channels; images can be fed as 1 (L) or 3 (RGB)"
            )
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != self.channels:
                raise ConfigError(f"{name} must have {self.channels} values (one per channel), got {values!r}")
            for v in values:
                (positive if name == "std" else number)(name, v)
        positive("crop_pct", self.crop_pct)  # a model's config may exceed 1 (timm then pads); --crop-pct may not
        one_of("interpolation", self.interpolation, INTERPOLATIONS)
        one_of("crop_mode", self.crop_mode, CROP_MODES)

    @property
    def channels(self) -> int:
        return self.input_size[0]

    @property
    def mode(self) -> str:
        """The PIL mode images are converted to: ``"L"`` or ``"RGB"``."""
        return MODES[self.channels]

    def input_spec(self) -> InputSpec:
        """The exact-pad path's :class:`InputSpec` (equal values stay one float: the zoo path, bit for bit)."""
        _, h, w = self.input_size
        if h != w:
            raise ConfigError(f"input_size must be square for the zoo models' exact-pad path, got {h}x{w}")
        mean = self.mean[0] if len(set(self.mean)) == 1 else self.mean
        std = self.std[0] if len(set(self.std)) == 1 else self.std
        return InputSpec(img_size=h, in_chans=self.channels, mean=mean, std=std)

    def timm_config(self) -> dict[str, Any]:
        """The keyword arguments of ``timm.data.create_transform``."""
        return {
            "input_size": self.input_size,
            "interpolation": self.interpolation,
            "mean": self.mean,
            "std": self.std,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    def eval_transform(self) -> EvalTransform:
        """The deterministic transform of evaluation and calibration images (PIL image -> tensor)."""
        return EvalTransform(self)

    def train_transform(self, generator: torch.Generator) -> TrainTransform:
        """The seeded training augmentation (see :class:`TrainTransform`)."""
        return TrainTransform(self, generator)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"], d["mean"], d["std"] = list(self.input_size), list(self.mean), list(self.std)
        return d


def to_mode(img, mode: str):
    """``img`` converted to PIL ``mode`` (``"L"`` or ``"RGB"``); 16-bit grayscale is scaled to 8 bits."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        from vitcompress.data.folder import _to_8bit

        img = _to_8bit(img)
    return img if img.mode == mode else img.convert(mode)


def _to_float(img) -> torch.Tensor:
    """A PIL image as a (C, H, W) float tensor in [0, 1] (exactly uint8 / 255)."""
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class FitTransform:
    """The zoo's exact-pad path on a PIL image: :func:`fit_to_model` with ``spec`` (no mode conversion:
    ``fit_to_model`` replicates 1 -> 3 channels and averages 3 -> 1)."""

    def __init__(self, spec: InputSpec):
        self.spec = spec

    def __call__(self, img) -> torch.Tensor:
        img = img if img.mode in ("L", "RGB") else to_mode(img, MODES[self.spec.in_chans])
        return fit_to_model(_to_float(img), self.spec)


class EvalTransform:
    """A model's evaluation preprocessing on a PIL image (see the module docstring)."""

    def __init__(self, pre: Preprocess):
        self.pre = pre
        if pre.exact_pad:
            self.spec = pre.input_spec()
        else:
            from timm.data import create_transform

            self.inner = create_transform(**pre.timm_config(), is_training=False)

    def __call__(self, img) -> torch.Tensor:
        img = to_mode(img, self.pre.mode)
        return fit_to_model(_to_float(img), self.spec) if self.pre.exact_pad else self.inner(img)


class TrainTransform:
    """Seeded training augmentation on a PIL image.

    Image folders: a random resized crop (timm's defaults: scale 0.08-1, aspect 3/4-4/3, the model's
    interpolation) to the input size and a horizontal flip with probability 0.5, then the model's
    normalisation. The zoo's exact-pad path: its own random crop after zero padding (2 px per 28) and flip.
    Every draw comes from ``generator`` in a fixed order, so a sequence of items is reproduced by
    re-seeding it; the trainer re-seeds it from (seed, step, rank) before each step, and a multi-worker
    DataLoader from :func:`~vitcompress.data.datasets.make_loader` seeds each worker's copy from its seed.
    """

    def __init__(self, pre: Preprocess, generator: torch.Generator):
        self.pre, self.generator = pre, generator
        self.spec = pre.input_spec() if pre.exact_pad else None

    def __call__(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        img = to_mode(img, self.pre.mode)
        if self.pre.exact_pad:
            x = _to_float(img)
            x = random_crop_flip(x, pad=max(1, round(min(x.shape[-2:]) / 14)), generator=self.generator)
            return fit_to_model(x, self.spec)
        from timm.data.transforms import str_to_interp_mode

        top, left, h, w = random_resized_crop_params(img.size, self.generator)
        size = list(self.pre.input_size[1:])
        img = TF.resized_crop(img, top, left, h, w, size, interpolation=str_to_interp_mode(self.pre.interpolation))
        if torch.rand((), generator=self.generator) < FLIP_P:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), list(self.pre.mean), list(self.pre.std))


def random_resized_crop_params(
    size: tuple[int, int], generator: torch.Generator, scale=RRC_SCALE, ratio=RRC_RATIO
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random resized crop of an image of ``size`` (width, height).

    torchvision's ``RandomResizedCrop.get_params`` (ten tries, then the central crop) drawing from ``generator``.
    """
    width, height = size
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(lo, hi, generator=generator).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    w, h = width, height
    if in_ratio < ratio[0]:
        h = round(w / ratio[0])
    elif in_ratio > ratio[1]:
        w = round(h * ratio[1])
    return (height - h) // 2, (width - w) // 2, h, w


def is_zoo_model(model: nn.Module) -> bool:
    """Whether ``model`` was loaded as a zoo model (its ``vitcompress_source`` names one)."""
    from vitcompress.models.zoo import ZOO

    source = getattr(model, "vitcompress_source", None)
    return isinstance(source, Mapping) and source.get("name") in ZOO


def model_input(model: nn.Module) -> tuple[int, int, int] | None:
    """(channels, height, width) the model takes, as :mod:`vitcompress.models.inputs` reads it (a timm patch
    embedding, ``img_size``, a Hugging Face config, timm's ``pretrained_cfg``); None when it says nothing."""
    declared, chans = declared_size(model), declared_channels(model)
    if declared is None or chans is None:
        return None
    return chans, *declared[0]


def fit_channels(name: str, values: Any, channels: int, average: bool = False) -> tuple[float, ...]:
    """``values`` as one per channel: one value is repeated; with ``average``, a model's 3-channel
    statistics become their average for a 1-channel model.

    Raises:
        ConfigError: neither one value nor one per channel.
    """
    values = (values,) if isinstance(values, (int, float)) else tuple(values)
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if average and channels == 1:
        return (sum(values) / len(values),)
    raise ConfigError(f"{name} has {len(values)} values; give one, or one per channel ({channels} for this model)")


def _attached(cfg: Mapping) -> dict[str, Any]:
    if not isinstance(cfg, Mapping) or not {"input_size", "mean", "std"} <= set(cfg):
        raise UnsupportedModelError(f"{PREPROCESS_ATTR} must be a dict with input_size, mean and std; got {cfg!r}")
    c = int(tuple(cfg["input_size"])[0])
    return {
        "input_size": tuple(int(v) for v in cfg["input_size"]),
        "mean": fit_channels("mean", cfg["mean"], c, average=True),
        "std": fit_channels("std", cfg["std"], c, average=True),
        "crop_pct": float(cfg.get("crop_pct") or 1.0),
        "interpolation": cfg.get("interpolation") or "bicubic",
        "crop_mode": cfg.get("crop_mode") or "center",
    }


def _zoo(model: nn.Module) -> dict[str, Any]:
    c, h, w = model_input(model)
    return {
        "input_size": (c, h, w),
        "mean": (FMNIST_MEAN,) * c,
        "std": (FMNIST_STD,) * c,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "exact_pad": True,
    }


def _timm(model: nn.Module) -> dict[str, Any]:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    c, h, w = model_input(model) or tuple(cfg["input_size"])
    return {
        "input_size": (c, h, w),
        "mean": fit_channels("mean", cfg["mean"], c, average=True),
        "std": fit_channels("std", cfg["std"], c, average=True),
        "crop_pct": float(cfg["crop_pct"]),
        "interpolation": cfg["interpolation"],
        "crop_mode": cfg.get("crop_mode") or "center",
    }


def model_preprocess(model: nn.Module) -> Preprocess:
    """The model's own preprocessing, before any override (see the module docstring)."""
    attached = getattr(model, PREPROCESS_ATTR, None)
    if attached is not None:
        return Preprocess(**_attached(attached))
    return Preprocess(**(_zoo(model) if is_zoo_model(model) else _timm(model)))


def resolve_preprocess(
    model: nn.Module,
    *,
    input_size: int | tuple[int, ...] | None = None,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
    crop_pct: float | None = None,
    interpolation: str | None = None,
) -> Preprocess:
    """The model's own preprocessing with the given fields overridden (None keeps the model's).

    Args:
        input_size: one value (square) or (height, width).
        mean, std: one value, or one per channel of the model.
        crop_pct: in (0, 1]; interpolation: one of :data:`INTERPOLATIONS`.

    Raises:
        ConfigError: an override does not fit the model (e.g. 2 mean values for a 3-channel model).
    """
    pre = model_preprocess(model)
    c = pre.channels
    changes: dict[str, Any] = {}
    if input_size is not None:
        hw = (input_size,) if isinstance(input_size, int) else tuple(input_size)
        if len(hw) not in (1, 2):
            raise ConfigError(f"input_size takes one value (square) or two (height width), got {input_size!r}")
        changes["input_size"] = (c, hw[0], hw[-1])
    if mean is not None:
        changes["mean"] = fit_channels("mean", mean, c)
    if std is not None:
        changes["std"] = fit_channels("std", std, c)
    if crop_pct is not None:
        changes["crop_pct"] = crop_pct
    if interpolation is not None:
        changes["interpolation"] = interpolation
    if pre.exact_pad and (crop_pct is not None or interpolation is not None):
        log.warning("--crop-pct and --interpolation do not apply to the zoo models' exact-pad preprocessing")
    return replace(pre, **changes)
