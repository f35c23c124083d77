"""Cost accounting: MACs per op at the real input size, BOPs and model size.

Counted as MACs, per image (batch 1), from the shapes seen in one forward pass:

- every ``nn.Linear`` (tokens × in × out) and ``nn.Conv2d`` (H_out·W_out·C_out·C_in/groups·k_h·k_w),
  subclasses included;
- the two activation × activation matmuls of attention, q·kᵀ and attn·v, each
  ``B_ · heads · N · N · head_dim`` per call of a timm ``Attention`` / Swin ``WindowAttention``
  (B_ = windows for Swin, N = tokens per window).

Not counted: LayerNorm, softmax, GELU, residual and bias additions, the attention scaling, the
relative-position-bias gather and the shift mask (none is a multiply-accumulate of two operands of
the quantized matmul kind). Bits come from the modules' quantizers (:mod:`vitcompress.cost.bits`).
"""

from __future__ import annotations

import torch
from torch import nn

from vitcompress.cost.bits import (
    act_bits,
    qparam_bits,
    quantizer_module_ids,
    weight_channel_bits,
    weight_storage_bits,
)
from vitcompress.cost.probe import OpShape, probe, resolve_input
from vitcompress.cost.report import FP_BITS, CostReport, LayerCost

FP_BOPS_PER_MAC = FP_BITS * FP_BITS


def cost(model: nn.Module, input_size: int | None = None, in_chans: int | None = None) -> CostReport:
    """MACs, BOPs and size of ``model`` for one image.

    Bits are read from the quantizers the modules carry at call time (no calibration is needed:
    the probing forward runs with every quantizer passed through). The model is left as found.

    Args:
        model: a timm ViT/DeiT/Swin (float or quantized) or any module of linears and convs.
        input_size: square image size; default ``model.patch_embed.img_size``. A different size
            needs a model built with ``dynamic_img_size=True`` (otherwise ConfigError); a model
            without ``patch_embed`` needs it.
        in_chans: input channels; default the first conv's.

    Returns:
        The per-op :class:`CostReport`.

    Raises:
        ConfigError: ``input_size`` / ``in_chans`` missing or not accepted by the model.
        UnsupportedModelError: an attention type whose matmuls cannot be counted.
    """
    size, chans = resolve_input(model, input_size, in_chans)
    seen = probe(model, size, chans)
    layers = _ordered_rows(model, seen)
    return _totals(model, layers, size)


def _ordered_rows(model: nn.Module, seen: dict[str, OpShape]) -> list[LayerCost]:
    """Rows in first-call order, the attention matmuls right after their ``qkv``; then the weight
    layers that never ran (0 MACs; their weights still take space)."""
    weight_rows: dict[str, LayerCost] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weight_rows[name] = _weight_row(module, name, seen.get(name))
    rows: list[LayerCost] = []
    pending: dict[str, list[LayerCost]] = {}  # attention rows waiting for their qkv row
    for name, op in seen.items():
        if op.kind == "attention":
            matmuls = _matmul_rows(model.get_submodule(name), name, op)
            if f"{name}.qkv" in seen:
                pending[f"{name}.qkv"] = matmuls
            else:
                rows += matmuls
        else:
            rows.append(weight_rows.pop(name))
            rows += pending.pop(name, [])
    return rows + [r for rows_left in pending.values() for r in rows_left] + list(weight_rows.values())


def _weight_row(module: nn.Module, name: str, op: OpShape | None) -> LayerCost:
    macs_per_channel = op.macs_per_channel if op is not None else 0
    bits = weight_channel_bits(module, name)
    a_bits = act_bits(getattr(module, "input_quantizer", None))
    # Σ_c MACs_c · b_w(c) · b_a with MACs_c equal for every output channel c; an N:M-sparse layer
    # executes only its kept MACs (n/m of them), so its BOPs count those; its MACs column stays dense
    sparsity = getattr(module, "weight_sparsity", None)
    executed = sparsity.kept_macs(macs_per_channel) if sparsity is not None else macs_per_channel
    bops = _bops(executed, float(bits.sum()), a_bits)
    return LayerCost(
        name=name,
        kind="conv" if isinstance(module, nn.Conv2d) else "linear",
        macs=macs_per_channel * bits.numel(),
        w_bits=float(bits.mean()),
        a_bits=a_bits,
        a2_bits=None,
        bops=bops,
        params=module.weight.numel(),
        size_bits=weight_storage_bits(module, name) + qparam_bits(module),
    )


def _matmul_rows(module: nn.Module, name: str, op: OpShape) -> list[LayerCost]:
    q, k, probs, v = (act_bits(getattr(module, f"{p}_quantizer", None)) for p in ("q", "k", "probs", "v"))
    macs = op.matmul_macs
    return [
        LayerCost(f"{name}.qk", "matmul", macs, None, q, k, _bops(macs, q, k), 0, 0),
        LayerCost(f"{name}.av", "matmul", macs, None, probs, v, _bops(macs, probs, v), 0, 0),
    ]


def _bops(macs: int, *bits: float) -> int:
    """``macs × Π bits`` as an exact integer (Python ints: no float rounding on large models)."""
    out = macs
    for b in bits:
        out = out * int(b) if float(b).is_integer() else out * b
    return int(round(out))


def _totals(model: nn.Module, layers: list[LayerCost], size: int) -> CostReport:
    macs = sum(r.macs for r in layers)
    bops = sum(r.bops for r in layers)
    stored = _stored_tensors(model)
    every = sum(t.numel() for t in stored.values())
    # the weights of the linear/conv rows are in their size_bits; everything else is stored at 32 bit
    row_weights: dict[int, int] = {}  # weight id -> its row's size_bits; a weight shared by two modules
    for r in layers:  # (MixA-Q's two branches) is stored, and counted, once
        if r.kind != "matmul":
            row_weights.setdefault(id(model.get_submodule(r.name).weight), r.size_bits)
    other = every - sum(stored[i].numel() for i in row_weights if i in stored)
    size_bits = sum(row_weights.values()) + sum(r.size_bits for r in layers if r.kind == "matmul") + other * FP_BITS
    bops_fp32 = macs * FP_BOPS_PER_MAC
    return CostReport(
        layers=tuple(layers),
        macs=macs,
        bops=bops,
        bops_fp32=bops_fp32,
        rel_bops=bops / bops_fp32 if macs else 1.0,
        size_bytes=-(-size_bits // 8),
        fp_size_bytes=every * FP_BITS // 8,
        input_size=size,
    )


def _stored_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """Every distinct parameter and persistent buffer, by id, outside the quantizers (their scales
    count through ``qparam_count``; timm's non-persistent index buffers and masks are rebuilt, not stored)."""
    skip = quantizer_module_ids(model)
    out: dict[int, torch.Tensor] = {}
    for module in model.modules():
        if id(module) in skip:
            continue
        for p in module._parameters.values():
            if p is not None:
                out[id(p)] = p
        for name, b in module._buffers.items():
            if b is not None and name not in module._non_persistent_buffers_set:
                out[id(b)] = b
    return out


def macs_by_block(model: nn.Module, input_size: int | None = None, in_chans: int | None = None) -> dict[str, int]:
    """MACs grouped per transformer block, for the equivalent-activation-bits formula of MixA-Q (Wang,
    Shubham, De La Parra, Kumar, "MixA-Q: Revisiting Activation Sparsity for Vision Transformers from a
    Mixed-Precision Quantization Perspective", ICCV 2025, arXiv:2507.19131; appendix §6.2).

    Keys: ``blocks.i`` (ViT/DeiT), ``layers.s.blocks.j`` (Swin), ``layers.s.downsample`` (Swin patch
    merging, the non-saveable part), otherwise the top-level module name (``patch_embed``, ``head``).
    Ops that did not run are left out; the values sum to ``cost(model).macs``.
    """
    out: dict[str, int] = {}
    for r in cost(model, input_size, in_chans).layers:
        if r.macs:
            key = block_key(r.name)
            out[key] = out.get(key, 0) + r.macs
    return out


def block_key(name: str) -> str:
    """The block an op belongs to (see :func:`macs_by_block`)."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) > 1:
        return ".".join(parts[:2])
    if parts[0] == "layers" and len(parts) > 3 and parts[2] == "blocks":
        return ".".join(parts[:4])
    if parts[0] == "layers" and len(parts) > 2:
        return ".".join(parts[:3])
    return parts[0]
