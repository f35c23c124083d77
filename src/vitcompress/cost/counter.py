"""Cost accounting (METHODS §0.5): MACs per op at the real input size, BOPs and model size.

Counted as MACs: every ``nn.Linear`` and ``nn.Conv2d`` (shapes seen in a real forward pass) and the
two activation × activation matmuls of attention (q·kᵀ and attn·v; for Swin per window). Not
counted: LayerNorm, softmax, GELU, additions, the relative-position-bias gather. All counts are per
image (batch 1).

Bit widths are read from the quantizers of the quantized modules (32 when absent or disabled):
``weight_quantizer``/``input_quantizer`` on linears and convs, ``q``/``k``/``probs``/``v`` on attention.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from timm.layers import Attention
from timm.models.swin_transformer import WindowAttention
from torch import nn

from vitcompress.errors import ConfigError, UnsupportedModelError

FP_BITS = 32


@dataclass(frozen=True)
class LayerCost:
    """One op: a linear/conv layer, or an attention matmul (``<attn>.qk`` / ``<attn>.av``)."""

    name: str
    kind: str  # "linear" | "conv" | "matmul"
    macs: int
    w_bits: float | None
    a_bits: float
    a2_bits: float | None
    bops: int
    params: int
    size_bits: int


@dataclass(frozen=True)
class CostReport:
    """Per-op costs and totals of a model at one input size."""

    layers: tuple[LayerCost, ...]
    macs: int
    bops: int
    bops_fp32: int
    rel_bops: float
    size_bytes: int
    fp_size_bytes: int
    input_size: int

    def to_dict(self) -> dict:
        return asdict(self)


def _bits(qz) -> float:
    return float(qz.spec.bits) if qz is not None and qz.enabled and qz.spec.enabled else float(FP_BITS)


def _channel_bits(module: nn.Module, n: int) -> torch.Tensor:
    qz = getattr(module, "weight_quantizer", None)
    if qz is None or not qz.enabled or not qz.spec.enabled:
        return torch.full((n,), float(FP_BITS))
    return qz.bits_per_channel(n).double()


def _weight_size_bits(module: nn.Module) -> int:
    """Weight storage (+ scale/zero-point overhead at 32 bit each); ``storage_bits()`` overrides it."""
    if hasattr(module, "storage_bits"):
        return int(module.storage_bits())
    w = module.weight
    per_channel = w[0].numel()
    bits = _channel_bits(module, w.shape[0])
    qz = getattr(module, "weight_quantizer", None)
    overhead = qz.qparam_count() * FP_BITS if qz is not None else 0
    return int(round(float((bits * per_channel).sum()))) + overhead


@contextlib.contextmanager
def _float_forward(model: nn.Module):
    """Run the shape-probing forward with every quantizer passed through (no calibration needed)."""
    from vitcompress.quant import Quantizer

    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, was in zip(quantizers, saved):
            q.enabled = was


def _input_shape(model: nn.Module, input_size: int | None, in_chans: int | None) -> tuple[int, int]:
    pe = getattr(model, "patch_embed", None)
    if pe is None:
        if input_size is None or in_chans is None:
            raise ConfigError("input_size and in_chans are needed for a model without a timm patch_embed")
        return input_size, in_chans
    size = pe.img_size[0] if isinstance(pe.img_size, (tuple, list)) else int(pe.img_size)
    chans = pe.proj.in_channels
    if input_size is not None and input_size != size:
        raise ConfigError(f"input_size {input_size} differs from the model's img_size {size}: build the model "
                          "for that size (timm: img_size=...) and count it")
    return size, in_chans or chans


def cost(model: nn.Module, input_size: int | None = None, in_chans: int | None = None) -> CostReport:
    """MACs, BOPs and size of ``model`` for one image of its input size.

    Args:
        input_size: square image size; must equal the model's own (timm fixes it at construction).
        in_chans: input channels (default: the patch embedding's).
    """
    size, chans = _input_shape(model, input_size, in_chans)
    seen: dict[str, tuple] = {}
    hooks = []

    def record(name: str, info: tuple) -> None:  # hooks must return None: a value would replace the output
        seen.setdefault(name, info)

    names = {m: n for n, m in model.named_modules()}
    for module, name in names.items():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: record(name, ("w", tuple(i[0].shape), tuple(o.shape)))))
        elif isinstance(module, (Attention, WindowAttention)):
            hooks.append(module.register_forward_pre_hook(
                lambda m, i, name=name: record(name, ("attn", tuple(i[0].shape)))))
        elif "attention" in type(module).__name__.lower() and any(True for _ in module.parameters()):
            for h in hooks:
                h.remove()
            raise UnsupportedModelError(f"cost model does not know attention type {type(module).__name__} ({name})")
    was_training = model.training
    try:
        with torch.no_grad(), _float_forward(model):
            model.eval()(torch.zeros(1, chans, size, size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    layers = [row for name, info in seen.items() for row in _rows(model.get_submodule(name), name, info)]
    return _totals(model, layers, size)


def _rows(module: nn.Module, name: str, info: tuple) -> list[LayerCost]:
    if info[0] == "attn":
        b_, n, _ = info[1]  # (batch·windows, tokens, C) with batch 1
        heads = module.num_heads
        head_dim = module.qkv.out_features // 3 // heads
        macs = b_ * heads * n * n * head_dim
        q, k, p, v = (_bits(getattr(module, f"{x}_quantizer", None)) for x in ("q", "k", "probs", "v"))
        return [LayerCost(f"{name}.qk", "matmul", macs, None, q, k, int(macs * q * k), 0, 0),
                LayerCost(f"{name}.av", "matmul", macs, None, p, v, int(macs * p * v), 0, 0)]
    _, in_shape, out_shape = info
    w = module.weight
    out_ch = w.shape[0]
    if isinstance(module, nn.Conv2d):
        macs_per_out = out_shape[-1] * out_shape[-2] * w[0].numel()  # per output channel
        kind = "conv"
    else:
        tokens = int(torch.tensor(in_shape[:-1]).prod())
        macs_per_out = tokens * module.in_features
        kind = "linear"
    bits = _channel_bits(module, out_ch)
    a_bits = _bits(getattr(module, "input_quantizer", None))
    bops = int(round(float((bits * macs_per_out * a_bits).sum())))
    return [LayerCost(name, kind, macs_per_out * out_ch, float(bits.mean()), a_bits, None, bops, w.numel(),
                      _weight_size_bits(module))]


def _totals(model: nn.Module, layers: list[LayerCost], size: int) -> CostReport:
    macs = sum(r.macs for r in layers)
    bops = sum(r.bops for r in layers)
    counted = {id(model.get_submodule(r.name).weight) for r in layers if r.kind != "matmul"}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    persistent = sum(b.numel() for name, b in _persistent_buffers(model))
    size_bits = sum(r.size_bits for r in layers) + (other + persistent) * FP_BITS
    fp_bits = (sum(p.numel() for p in model.parameters()) + persistent) * FP_BITS
    return CostReport(tuple(layers), macs, bops, macs * FP_BITS * FP_BITS,
                      bops / max(1, macs * FP_BITS * FP_BITS), (size_bits + 7) // 8, fp_bits // 8, size)


def _persistent_buffers(model: nn.Module):
    """Persistent model buffers, excluding quantizer state (counted as scale overhead)."""
    from vitcompress.quant import Quantizer

    for mod_name, module in model.named_modules():
        if isinstance(module, Quantizer):
            continue
        for name, buf in module.named_buffers(recurse=False):
            if name not in module._non_persistent_buffers_set:
                yield f"{mod_name}.{name}", buf


def macs_by_block(model: nn.Module, input_size: int | None = None) -> dict[str, int]:
    """MACs grouped per transformer block (``blocks.i`` / ``layers.s.blocks.j``), others by top-level name."""
    out: dict[str, int] = {}
    for r in cost(model, input_size).layers:
        parts = r.name.split(".")
        if parts[0] == "blocks":
            key = ".".join(parts[:2])
        elif parts[0] == "layers" and len(parts) > 3 and parts[2] == "blocks":
            key = ".".join(parts[:4])
        else:
            key = parts[0] if parts[0] != "layers" else ".".join(parts[:3])
        out[key] = out.get(key, 0) + r.macs
    return out
