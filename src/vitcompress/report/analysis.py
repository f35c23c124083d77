"""Per-layer quantization analysis: bits and SQNR of every quantized layer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vitcompress.nn.linear import QuantConv2d, QuantLinear


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10·log10(‖ref‖² / ‖ref − approx‖²) in dB (inf if exact)."""
    noise = (reference.double() - approx.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


@dataclass(frozen=True)
class LayerQuantStats:
    """One quantized linear/conv layer: its bits and its error against the float model."""

    name: str
    w_bits: float
    a_bits: int
    weight_sqnr_db: float
    output_sqnr_db: float  # accumulated error: float model vs quantized model at this layer's output


@torch.no_grad()
def layer_stats(float_model: nn.Module, quant_model: nn.Module, x: torch.Tensor) -> list[LayerQuantStats]:
    """Bits and SQNR of every quantized linear/conv of ``quant_model`` on batch ``x``."""
    names = [n for n, m in quant_model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    outputs: dict[str, dict[str, torch.Tensor]] = {"f": {}, "q": {}}
    handles = []
    for tag, model in (("f", float_model), ("q", quant_model)):
        for n in names:
            module = model.get_submodule(n)
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, tag=tag, n=n: outputs[tag].__setitem__(n, out.detach())
                )
            )
    try:
        float_model.eval()(x)
        quant_model.eval()(x)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for n in names:
        qm = quant_model.get_submodule(n)
        w_bits = qm.weight_quantizer.bits_per_channel(qm.weight.shape[0]).float().mean().item()
        a_bits = qm.input_quantizer.spec.bits if qm.input_quantizer.enabled else 32
        rows.append(
            LayerQuantStats(
                n, w_bits, a_bits, sqnr_db(qm.weight, qm.quantized_weight()), sqnr_db(outputs["f"][n], outputs["q"][n])
            )
        )
    return rows
