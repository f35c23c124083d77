"""Cost accounting: MACs per op at the real input size, BOPs and model size.

MACs are counted from what runs (:mod:`vitcompress.cost.probe`): every product of one forward pass
of one image (batch 1) at the ATen level, whatever form the model writes it in:

- a product with a parameter is a weight op, one row per module holding the weight (``nn.Linear``,
  ``nn.Conv2d``, but also ``F.linear(x, self.qkv.weight)`` inside an attention module: the row is
  ``qkv``'s). Linear: tokens × in × out; convolution: H_out·W_out·C_out·C_in/groups·k_h·k_w;
- a product of two activations is an activation × activation matmul, one row per product position
  in the module that runs it: ``<module>.qk`` for attention scores (its output reaches a softmax),
  ``<module>.av`` for the product with the softmax output, ``<module>.mm`` otherwise (linear
  attention); further ones in the same module call get a number (``qk1``, ``av1``, ``mm1``, …).
  Fused ``scaled_dot_product_attention`` is its two products, ``qk`` and ``av``. A name that is
  already a module's (ConViT's GPSA has a linear called ``qk``) gets ``_matmul`` appended.

Not counted: bias additions, normalisations, softmax, activations, element-wise products,
residuals (none is a multiply-accumulate of two operands); ``torch.utils.flop_counter`` counts the same
products (its FLOPs are 2 × these MACs; the tests check equality on every family).

Bits: those of the quantizer whose output feeds each operand in the probe (through views, copies and
scaling by a constant); where no quantizer output reaches an operand, the ones of the module's
``input_quantizer`` (weight ops) or ``q``/``k``/``probs``/``v_quantizer`` (``qk``/``av``) attributes,
else 32 (:mod:`vitcompress.cost.bits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vitcompress.cost.bits import (
    act_bits,
    qparam_bits,
    quantizer_module_ids,
    weight_channel_bits,
    weight_storage_bits,
)
from vitcompress.cost.probe import Probe, probe
from vitcompress.cost.report import FP_BITS, CostReport, LayerCost
from vitcompress.cost.trace import OpEvent
from vitcompress.models.inputs import resolve_input_shape

FP_BOPS_PER_MAC = FP_BITS * FP_BITS
WEIGHT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
# the operand quantizers a legacy attention module carries, by product label (first, second operand)
_ATTENTION_ATTRS = {"qk": ("q_quantizer", "k_quantizer"), "av": ("probs_quantizer", "v_quantizer")}


def cost(model: nn.Module, input_size: int | Sequence[int] | None = None, in_chans: int | None = None) -> CostReport:
    """MACs, BOPs and size of ``model`` for one image.

    Bits are read from the quantizers at call time (no calibration is needed: the probing forward
    passes every quantizer through). The model is left as found.

    Args:
        model: any image model, float or quantized (timm ViT/DeiT/Swin/BEiT/EVA/…, Hugging Face
            modules, anything made of linears, convolutions and matmuls).
        input_size: image size, one value (square) or (height, width); default: the model's
            (:mod:`vitcompress.models.inputs`). A fixed-size timm model accepts only its own.
        in_chans: input channels; default the first convolution's.

    Returns:
        The per-op :class:`CostReport`.

    Raises:
        ConfigError: ``input_size`` / ``in_chans`` missing or not accepted by the model.
    """
    shape = resolve_input_shape(model, input_size, in_chans)
    seen = probe(model, shape)
    rows = _Rows(model, seen)
    return _totals(model, rows.layers(), rows.weights, shape)


@dataclass
class _Acc:
    """One row being summed over the events that belong to it."""

    first: int
    kind: str
    macs: int = 0
    a_weighted: float = 0.0  # Σ macs · a_bits
    b_weighted: float = 0.0  # Σ macs · b_bits (matmuls)
    bops: int = 0  # matmuls: Σ macs · a_bits · b_bits
    module: nn.Module | None = None
    weight: torch.Tensor | None = None
    is_weight_attr: bool = True
    out_channels: int = 0


class _Rows:
    """The probe's events grouped into rows (weight ops by holder, matmuls by module and position)."""

    def __init__(self, model: nn.Module, seen: Probe):
        self.model, self.seen = model, seen
        self.acc: dict[str, _Acc] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.module_paths = {name for name, _ in model.named_modules()}
        labels = _matmul_labels(seen.events)
        for e in seen.events:
            if e.param is not None:
                self._weight_event(e)
            else:
                self._matmul_event(e, labels[e.call])

    def _owner(self, e: OpEvent) -> tuple[str, str]:
        """The module holding the weight: the innermost running one that holds it, else one below it."""
        owners = self.seen.owners[e.param]
        paths = {p: a for p, a in owners}
        for frame in reversed(e.frames):
            if frame in paths:
                return frame, paths[frame]
            below = next(((p, a) for p, a in owners if p.startswith(f"{frame}.") or not frame), None)
            if below is not None:
                return below
        return owners[0]

    def _weight_event(self, e: OpEvent) -> None:
        path, attr = self._owner(e)
        name = path if attr == "weight" else (f"{path}.{attr}" if path else attr)
        module = self.model.get_submodule(path)
        acc = self.acc.get(name)
        if acc is None:
            acc = self.acc[name] = _Acc(e.index, e.kind, module=module, out_channels=e.out_channels)
            acc.weight, acc.is_weight_attr = self.seen.params[e.param], attr == "weight"
            self.weights[name] = acc.weight
        a = e.a_bits if e.a_bits is not None else act_bits(getattr(module, "input_quantizer", None))
        acc.macs += e.macs
        acc.a_weighted += e.macs * a

    def _matmul_event(self, e: OpEvent, label: str) -> None:
        path = e.call[0]
        name = f"{path}.{label}" if path else label
        if name in self.module_paths:  # ConViT's GPSA has a linear named ``qk``
            name = f"{name}_matmul"
        acc = self.acc.get(name)
        if acc is None:
            acc = self.acc[name] = _Acc(e.index, "matmul", module=self.model.get_submodule(path))
        attrs = _ATTENTION_ATTRS.get(label.rstrip("0123456789"), (None, None))
        a = e.a_bits if e.a_bits is not None else act_bits(getattr(acc.module, attrs[0] or "", None))
        b = e.b_bits if e.b_bits is not None else act_bits(getattr(acc.module, attrs[1] or "", None))
        acc.macs += e.macs
        acc.a_weighted += e.macs * a
        acc.b_weighted += e.macs * b
        acc.bops += _bops(e.macs, a, b)

    def layers(self) -> list[LayerCost]:
        """Rows in first-run order, then the linears and convolutions that never ran (0 MACs)."""
        rows = [self._row(name, acc) for name, acc in sorted(self.acc.items(), key=lambda kv: kv[1].first)]
        ran = {id(w) for w in self.weights.values()}  # a shared weight that ran through another holder is not idle
        for name, module in self.model.named_modules():
            if isinstance(module, WEIGHT_LAYERS) and module.weight is not None and id(module.weight) not in ran:
                ran.add(id(module.weight))
                self.weights[name] = module.weight
                rows.append(_weight_row(module, name, 0, FP_BITS, True, module.weight))
        return rows

    def _row(self, name: str, acc: _Acc) -> LayerCost:
        a_bits = acc.a_weighted / acc.macs if acc.macs else float(FP_BITS)
        if acc.kind != "matmul":
            per_channel = acc.macs // max(1, acc.out_channels)
            return _weight_row(acc.module, name, per_channel, a_bits, acc.is_weight_attr, acc.weight)
        b_bits = acc.b_weighted / acc.macs if acc.macs else float(FP_BITS)
        return LayerCost(name, "matmul", acc.macs, None, _clean(a_bits), _clean(b_bits), acc.bops, 0, 0)


def _clean(bits: float) -> float:
    """A MAC-weighted mean of bit widths, exact when they were all equal."""
    return float(round(bits)) if abs(bits - round(bits)) < 1e-9 else bits


def _matmul_labels(events: list[OpEvent]) -> dict[tuple[str, int], str]:
    """``qk``/``av``/``mm`` plus a number for the n-th of its kind in the module call (see module docstring)."""
    kinds: dict[tuple[str, int], str] = {}
    for e in events:
        if e.param is None and e.call not in kinds:
            kinds[e.call] = e.part or ("av" if e.probs else "qk" if e.scores else "mm")
    labels: dict[tuple[str, int], str] = {}
    counts: dict[tuple[str, str], int] = {}
    for call in sorted(kinds, key=lambda c: (c[0], c[1])):
        n = counts.get((call[0], kinds[call]), 0)
        counts[(call[0], kinds[call])] = n + 1
        labels[call] = f"{kinds[call]}{n or ''}"
    return labels


def _weight_row(
    module: nn.Module, name: str, macs_per_channel: int, a_bits: float, is_weight_attr: bool, weight: torch.Tensor
) -> LayerCost:
    if is_weight_attr:
        bits = weight_channel_bits(module, name)
        size_bits = weight_storage_bits(module, name) + qparam_bits(module)
        sparsity = getattr(module, "weight_sparsity", None)
    else:  # a parameter used as a weight that is not a module's ``weight``: no quantizer of its own
        bits = torch.full((weight.shape[0],), float(FP_BITS), dtype=torch.float64)
        size_bits, sparsity = weight.numel() * FP_BITS, None
    # Σ_c MACs_c · b_w(c) · b_a with MACs_c equal for every output channel c; an N:M-sparse layer
    # executes only its kept MACs (n/m of them), so its BOPs count those; its MACs column stays dense
    executed = sparsity.kept_macs(macs_per_channel) if sparsity is not None else macs_per_channel
    a_bits = _clean(a_bits)
    return LayerCost(
        name=name,
        kind="conv" if weight.dim() > 2 else "linear",
        macs=macs_per_channel * bits.numel(),
        w_bits=float(bits.mean()),
        a_bits=a_bits,
        a2_bits=None,
        bops=_bops(executed, float(bits.sum()), a_bits),
        params=weight.numel(),
        size_bits=size_bits,
    )


def _bops(macs: int, *bits: float) -> int:
    """``macs × Π bits`` as an exact integer (Python ints: no float rounding on large models)."""
    out = macs
    for b in bits:
        out = out * int(b) if float(b).is_integer() else out * b
    return int(round(out))


def _totals(
    model: nn.Module, layers: list[LayerCost], weights: dict[str, torch.Tensor], shape: tuple[int, int, int]
) -> CostReport:
    macs = sum(r.macs for r in layers)
    bops = sum(r.bops for r in layers)
    stored = _stored_tensors(model)
    every = sum(t.numel() for t in stored.values())
    # the weights of the linear/conv rows are in their size_bits; everything else is stored at 32 bit
    row_weights: dict[int, int] = {}  # weight id -> its row's size_bits; a weight shared by two modules
    for r in layers:  # (MixA-Q's two branches) is stored, and counted, once
        if r.kind != "matmul":
            row_weights.setdefault(id(weights[r.name]), r.size_bits)
    other = every - sum(stored[i].numel() for i in row_weights if i in stored)
    size_bits = sum(row_weights.values()) + other * FP_BITS
    bops_fp32 = macs * FP_BOPS_PER_MAC
    return CostReport(
        layers=tuple(layers),
        macs=macs,
        bops=bops,
        bops_fp32=bops_fp32,
        rel_bops=bops / bops_fp32 if macs else 1.0,
        size_bytes=-(-size_bits // 8),
        fp_size_bytes=every * FP_BITS // 8,
        input_size=shape[1],
        input_shape=shape,
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


def macs_by_block(
    model: nn.Module, input_size: int | Sequence[int] | None = None, in_chans: int | None = None
) -> dict[str, int]:
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
