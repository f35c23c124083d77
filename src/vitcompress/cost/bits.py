"""Reading bit widths and storage from quantizers (duck-typed contract).

Activation bits of a product are those of the quantizer whose output reaches it in the probing
forward (:mod:`vitcompress.cost.probe`). Weight bits, storage and, for a module that carries
quantizers without calling them, activation bits are read from attributes: ``weight_quantizer`` and
``input_quantizer`` on linears and convs; ``q_quantizer``, ``k_quantizer``, ``probs_quantizer`` and
``v_quantizer`` on attention modules. The cost model only relies on this interface of a quantizer
``qz`` (so it does not import :mod:`vitcompress.quant` and works with any implementation):

- ``qz.enabled`` (bool) and ``qz.spec.bits`` (int; 32 means not quantized);
- ``qz.bits_per_channel(n)``: float tensor (n,) of per-output-channel bits (group-wise bits vary);
- ``qz.qparam_count()``: number of stored scale and zero-point values.

A missing or disabled quantizer counts as 32 bits with no stored scales.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from vitcompress.cost.report import FP_BITS
from vitcompress.errors import UnsupportedModelError

QUANTIZER_SUFFIX = "_quantizer"


def _active(qz: Any) -> bool:
    return qz is not None and bool(getattr(qz, "enabled", False))


def act_bits(qz: Any) -> float:
    """Bits of the activation a quantizer guards (32 when missing or disabled)."""
    return float(qz.spec.bits) if _active(qz) else float(FP_BITS)


def weight_channel_bits(module: nn.Module, name: str) -> torch.Tensor:
    """Float64 tensor (out_channels,): the weight bits of each output channel of ``module``."""
    n = module.weight.shape[0]
    qz = getattr(module, "weight_quantizer", None)
    if not _active(qz):
        return torch.full((n,), float(FP_BITS), dtype=torch.float64)
    bits = torch.as_tensor(qz.bits_per_channel(n)).detach().to("cpu", torch.float64).flatten()
    if bits.numel() != n:
        raise UnsupportedModelError(f"{name}.weight_quantizer: bits_per_channel({n}) returned {bits.numel()} values")
    return bits


def qparam_bits(module: nn.Module) -> int:
    """Storage of the weight quantizer's scales and zero points, 32 bits each (0 when inactive)."""
    qz = getattr(module, "weight_quantizer", None)
    return int(qz.qparam_count()) * FP_BITS if _active(qz) else 0


def weight_storage_bits(module: nn.Module, name: str) -> int:
    """Bits to store ``module.weight`` (values + sparsity metadata), without the scale overhead.

    A module that defines ``storage_bits()`` supplies this number itself; a module with an N:M mask
    (child ``weight_sparsity`` with ``storage_bits(channel_bits, reduction)``) is counted as kept
    values plus index metadata (:mod:`vitcompress.sparsity.masks`); otherwise each output channel's weights are counted
    at that channel's bit width.
    """
    storage = getattr(module, "storage_bits", None)
    if callable(storage):
        return int(storage())
    sparsity = getattr(module, "weight_sparsity", None)  # N:M mask (vitcompress.sparsity.NMSparsity)
    if sparsity is not None:
        return int(sparsity.storage_bits(weight_channel_bits(module, name), module.weight[0].numel()))
    per_channel = module.weight[0].numel()
    # float64 is exact here: bit widths are small integers and the sums stay far below 2**53
    return int(round(float(weight_channel_bits(module, name).sum()) * per_channel))


def is_quantizer(value: Any) -> bool:
    """A quantizer by the contract above (whatever attribute or container holds it)."""
    return all(callable(getattr(value, m, None)) for m in ("bits_per_channel", "qparam_count")) and hasattr(
        value, "spec"
    )


def quantizer_handles(model: nn.Module) -> Iterator[Any]:
    """Every distinct quantizer object of ``model``: an ``*_quantizer`` attribute of a module, or a
    submodule that fulfils the contract (held in a container, as generic attention points may be)."""
    seen: set[int] = set()
    for module in model.modules():
        if is_quantizer(module) and id(module) not in seen:
            seen.add(id(module))
            yield module
        # quantizers are submodules when they are nn.Modules, plain attributes otherwise
        for attr, value in (*module._modules.items(), *vars(module).items()):
            if attr.endswith(QUANTIZER_SUFFIX) and value is not None and id(value) not in seen:
                seen.add(id(value))
                yield value


def quantizer_module_ids(model: nn.Module) -> set[int]:
    """ids of the modules inside quantizers: their scales are counted through ``qparam_count``."""
    return {id(m) for qz in quantizer_handles(model) if isinstance(qz, nn.Module) for m in qz.modules()}
