"""The input shape a model is probed, exported and timed with: the model's own, or the user's.

Where the model says it (first found):

1. ``model.vitcompress_preprocess["input_size"]`` (what the loader attached, e.g. from a Hugging
   Face image-processor config);
2. a timm patch embedding's ``img_size`` (ViT, DeiT, Swin, BEiT, EVA, CaiT, XCiT, PiT, ...), fixed at
   construction unless the model was built with ``dynamic_img_size=True``;
3. ``model.img_size`` (EfficientViT-MSRA) or a Hugging Face ``config.image_size``;
4. timm's ``pretrained_cfg["input_size"]`` (LeViT, Twins, MobileViT, EfficientViT-MIT): the size the
   model was defined for, which a model built with another ``img_size`` does not update (a model that
   cannot run it fails with a message naming ``--input-size``).

Channels: the first convolution's (``pretrained_cfg["first_conv"]``, else the patch embedding's
projection, else the first ``Conv2d``), else ``in_chans`` / ``config.num_channels``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from vitcompress.errors import ConfigError, VitCompressError

SizeArg = int | Sequence[int] | None
INPUT_SIZE_HINT = "input_size (--input-size)"


def _pair(size: SizeArg, field: str) -> tuple[int, int] | None:
    if size is None:
        return None
    values = (size,) if isinstance(size, int) else tuple(size)
    if not 1 <= len(values) <= 2 or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
        raise ConfigError(f"{field}: one positive integer (square) or two (height width), got {size!r}")
    return (values[0], values[-1])


def declared_size(model: nn.Module) -> tuple[tuple[int, int], str, bool] | None:
    """(height, width), where it was read and whether the model is fixed to it; None when nothing says."""
    attached = getattr(model, "vitcompress_preprocess", None)
    if isinstance(attached, Mapping) and attached.get("input_size"):
        _, h, w = tuple(attached["input_size"])
        return (int(h), int(w)), "the model's preprocessing", False
    pe = getattr(model, "patch_embed", None)
    img_size = getattr(pe, "img_size", None)
    if img_size is not None:
        fixed = not getattr(model, "dynamic_img_size", False) and not getattr(pe, "dynamic_img_size", False)
        return _pair(img_size, "patch_embed.img_size"), "patch_embed.img_size", fixed
    for attr, where in ((getattr(model, "img_size", None), "img_size"), (_hf_size(model), "config.image_size")):
        if attr is not None:
            return _pair(attr, where), where, False
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and cfg.get("input_size"):
        _, h, w = tuple(cfg["input_size"])
        return (int(h), int(w)), "pretrained_cfg['input_size']", False
    return None


def _hf_size(model: nn.Module) -> int | Sequence[int] | None:
    size = getattr(getattr(model, "config", None), "image_size", None)
    return size if isinstance(size, (int, list, tuple)) else None


def declared_channels(model: nn.Module) -> int | None:
    """Input channels: the first convolution's, else ``in_chans`` / ``config.num_channels`` / timm's
    ``pretrained_cfg["input_size"]``."""
    conv = None
    cfg = getattr(model, "pretrained_cfg", None)
    first = cfg.get("first_conv") if isinstance(cfg, Mapping) else None
    if isinstance(first, str):
        try:
            conv = model.get_submodule(first)
        except AttributeError:
            conv = None
    if not isinstance(conv, nn.modules.conv._ConvNd):
        conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(conv, nn.modules.conv._ConvNd):
        conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is not None:
        return int(conv.in_channels)
    chans = getattr(model, "in_chans", None) or getattr(getattr(model, "config", None), "num_channels", None)
    if not isinstance(chans, int) and isinstance(cfg, Mapping) and len(cfg.get("input_size", ())) == 3:
        chans = cfg["input_size"][0]
    return chans if isinstance(chans, int) else None


def resolve_input_shape(
    model: nn.Module, input_size: SizeArg = None, in_chans: int | None = None
) -> tuple[int, int, int]:
    """(channels, height, width) of one input image of ``model``.

    Args:
        model: any image model.
        input_size: the user's size, one value (square) or (height, width); default: the model's.
        in_chans: the user's channel count; default: the model's first convolution's.

    Raises:
        ConfigError: no size known (naming ``--input-size``), a size the model is fixed against, or
            channels that differ from the first convolution's.
    """
    size = _pair(input_size, "input_size")
    declared = declared_size(model)
    if size is None:
        if declared is None:
            raise ConfigError(
                f"{INPUT_SIZE_HINT}: {type(model).__name__} does not say which image size it takes "
                "(no patch_embed.img_size, pretrained_cfg or config.image_size); pass the input size"
            )
        size = declared[0]
    elif declared is not None and declared[2] and size != declared[0]:
        h, w = declared[0]
        raise ConfigError(
            f"input_size: the model is built for {h}x{w} ({declared[1]}) and cannot run {size[0]}x{size[1]}; "
            f"build it with img_size={size[0]} (or timm's dynamic_img_size=True)"
        )
    chans = declared_channels(model)
    if in_chans is None:
        if chans is None:
            raise ConfigError("in_chans: the model has no convolution to read the input channels from; pass in_chans")
        in_chans = chans
    elif chans is not None and in_chans != chans:
        raise ConfigError(f"in_chans: the model's first conv takes {chans} channels, got {in_chans}")
    return int(in_chans), int(size[0]), int(size[1])


@contextlib.contextmanager
def runs_on(model: nn.Module, shape: tuple[int, ...]) -> Iterator[None]:
    """Turn a failure of the model's forward inside the block into a one-line ConfigError that names
    the input shape and ``--input-size`` (a stale ``pretrained_cfg`` size, a wrong user size)."""
    try:
        yield
    except VitCompressError:
        raise
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{INPUT_SIZE_HINT}: {type(model).__name__} does not run on a {'x'.join(map(str, shape))} input "
            f"({first[:200]}); pass the size it takes"
        ) from e


def check_runs(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """One forward of a zero image of ``shape`` (C, H, W) in eval mode; ConfigError (see :func:`runs_on`) if
    it fails. The model's train/eval flags are restored."""
    p = next(iter(model.parameters()), None)
    x = torch.zeros(1, *shape, device=p.device if p is not None else "cpu")
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), runs_on(model, shape):
            model.eval()(x)
    finally:
        for m, flag in flags:
            m.training = flag


def zero_image(model: nn.Module, input_size: SizeArg = None, in_chans: int | None = None) -> torch.Tensor:
    """A (1, C, H, W) zero image of :func:`resolve_input_shape`'s shape on the model's device, in its float dtype
    (the input of a probing or tracing forward). Raises ConfigError as that function does."""
    shape = resolve_input_shape(model, input_size, in_chans)
    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    return torch.zeros(1, *shape, device=p.device if p is not None else "cpu", dtype=dtype)
