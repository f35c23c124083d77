"""The shape-probing forward pass: which ops run, on which shapes, how many MACs each call costs.

One forward of a zero image (batch 1) under ``torch.no_grad()`` with hooks on every ``nn.Linear``,
``nn.Conv2d`` (subclasses included: the quantized layers subclass them) and attention module. MACs
come from the shapes actually seen, so padding, windows clamped to the feature map, CLS /
distillation tokens and modules called several times per forward are all counted as they run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitcompress.cost.bits import quantizer_handles
from vitcompress.errors import ConfigError, UnsupportedModelError

log = logging.getLogger(__name__)

# timm's ViT/DeiT ``Block`` uses ``timm.layers.Attention``; Swin blocks use ``WindowAttention``.
# Both (and subclasses, e.g. the quantized replacements) take x of shape (B_, N, C).
SUPPORTED_ATTENTION = (Attention, WindowAttention)


@dataclass
class OpShape:
    """What the probe saw of one module, accumulated over its calls.

    Attributes:
        kind: ``"linear"``, ``"conv"`` or ``"attention"``.
        macs_per_channel: linear/conv MACs per output channel (all output channels do the same work).
        matmul_macs: attention: MACs of each of q·kᵀ and attn·v (they are equal).
        calls: number of calls seen.
    """

    kind: str
    macs_per_channel: int = 0
    matmul_macs: int = 0
    calls: int = 0


def resolve_input(model: nn.Module, input_size: int | None, in_chans: int | None) -> tuple[int, int]:
    """The (square size, channels) to probe with: the model's own unless overridden.

    timm ViT and Swin fix their input size at construction (position embeddings, attention masks);
    a different ``input_size`` is accepted only when the model was built with ``dynamic_img_size=True``.
    """
    native = _native_size(model)
    if input_size is None:
        if native is None:
            raise ConfigError("input_size: the model has no patch_embed.img_size to read it from; pass input_size")
        input_size = native
    elif not isinstance(input_size, int) or input_size <= 0:
        raise ConfigError(f"input_size: must be a positive integer, got {input_size!r}")
    elif native is not None and input_size != native and not getattr(model, "dynamic_img_size", False):
        raise ConfigError(
            f"input_size: the model is built for {native}x{native} and cannot run {input_size}x"
            f"{input_size}; build it with img_size={input_size} (or timm's dynamic_img_size=True)"
        )
    chans = _native_chans(model)
    if in_chans is None:
        if chans is None:
            raise ConfigError("in_chans: the model has no Conv2d to read the input channels from; pass in_chans")
        in_chans = chans
    elif chans is not None and in_chans != chans:
        raise ConfigError(f"in_chans: the model's first conv takes {chans} channels, got {in_chans}")
    return input_size, in_chans


def _native_size(model: nn.Module) -> int | None:
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is None:
        return None
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if h != w:
        raise UnsupportedModelError(f"patch_embed.img_size {h}x{w} is not square; the cost model counts square inputs")
    return int(h)


def _native_chans(model: nn.Module) -> int | None:
    conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(conv, nn.Conv2d):
        conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else getattr(model, "in_chans", None)


def probe(model: nn.Module, input_size: int, in_chans: int) -> dict[str, OpShape]:
    """Run one zero image through ``model`` and return the ops seen, by module path, in first-call order.

    The model's train/eval flags, the quantizers' ``enabled`` flags and the grad mode are restored.
    """
    _check_attention_types(model)
    seen: dict[str, OpShape] = {}
    hooks = []
    try:
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                hooks.append(module.register_forward_hook(_weight_hook(seen, name)))
            elif isinstance(module, SUPPORTED_ATTENTION):
                # a pre-hook: the attention input (B_, N, C) is all that is needed
                hooks.append(module.register_forward_pre_hook(_attention_hook(seen, name), with_kwargs=True))
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        x = torch.zeros(1, in_chans, input_size, input_size, device=device, dtype=dtype)
        with torch.no_grad(), _eval_mode(model), _quantizers_off(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    log.debug("cost probe %dx%d: %d ops seen", input_size, input_size, len(seen))
    return seen


def _weight_hook(seen: dict[str, OpShape], name: str):
    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:  # must return None
        if isinstance(module, nn.Conv2d):
            # every output position of a channel costs C_in/groups·k_h·k_w MACs
            positions = output.numel() // module.out_channels
            per_channel = positions * module.weight[0].numel()
            kind = "conv"
        else:
            x = inputs[0]
            per_channel = (x.numel() // x.shape[-1]) * module.in_features  # tokens × in
            kind = "linear"
        op = seen.setdefault(name, OpShape(kind))
        op.macs_per_channel += per_channel
        op.calls += 1

    return hook


def _attention_hook(seen: dict[str, OpShape], name: str):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:  # must return None
        x = args[0] if args else kwargs["x"]
        b_, n, _ = x.shape  # (batch · windows, tokens per attention call, C)
        heads, head_dim = attention_geometry(module)
        op = seen.setdefault(name, OpShape("attention"))
        op.matmul_macs += b_ * heads * n * n * head_dim
        op.calls += 1

    return hook


def attention_geometry(module: nn.Module) -> tuple[int, int]:
    """(heads, head_dim) of a timm attention module (Swin's WindowAttention stores no head_dim)."""
    heads = int(module.num_heads)
    head_dim = getattr(module, "head_dim", None)
    if head_dim is None:
        head_dim = module.qkv.out_features // 3 // heads
    return heads, int(head_dim)


def _check_attention_types(model: nn.Module) -> None:
    """Refuse attention modules whose matmuls the hooks would miss (rather than under-count)."""
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED_ATTENTION):
            continue
        unknown = isinstance(module, nn.MultiheadAttention) or (
            "attention" in type(module).__name__.lower()
            and not any(isinstance(m, SUPPORTED_ATTENTION) for m in module.modules())
        )
        if unknown and any(True for _ in module.parameters()):
            raise UnsupportedModelError(
                f"{name}: the cost model cannot count the matmuls of {type(module).__name__}; "
                f"supported attention: {', '.join(c.__name__ for c in SUPPORTED_ATTENTION)} and subclasses"
            )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """eval() for the probe, then each module's own flag back (not one flag for all)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _quantizers_off(model: nn.Module) -> Iterator[None]:
    """Pass every quantizer through: shapes need no calibration, and an uncalibrated one may raise."""
    flags = [(qz, qz.enabled) for qz in quantizer_handles(model) if hasattr(qz, "enabled")]
    for qz, _ in flags:
        qz.enabled = False
    try:
        yield
    finally:
        for qz, flag in flags:
            qz.enabled = flag
