"""The records the cost model returns: one :class:`LayerCost` per op and the :class:`CostReport` totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FP_BITS = 32  # "not quantized": the reference every relative number divides by

OP_KINDS = ("linear", "conv", "matmul")


@dataclass(frozen=True)
class LayerCost:
    """Cost of one op, per image.

    Attributes:
        name: module path (``blocks.0.attn.qkv``); the attention matmuls are ``<attention path>.qk``
            (q·kᵀ) and ``<attention path>.av`` (attn·v).
        kind: ``"linear"``, ``"conv"`` or ``"matmul"`` (activation × activation).
        macs: multiply-accumulates, summed over every call of the module in one forward pass.
        w_bits: mean weight bit width over output channels; None for matmuls.
        a_bits: input-activation bits (q for ``.qk``, the softmax probabilities for ``.av``).
        a2_bits: second operand's bits for matmuls (k for ``.qk``, v for ``.av``); None otherwise.
        bops: bit operations, Σ over output channels of MACs × b_w × b_a (matmuls: MACs × b_a × b_a2).
        params: number of weight values (0 for matmuls; biases are not included).
        size_bits: storage of the weight: values at their bits (or the module's ``storage_bits()``)
            plus 32 bits per stored scale / zero point; 0 for matmuls.
    """

    name: str
    kind: str
    macs: int
    w_bits: float | None
    a_bits: float
    a2_bits: float | None
    bops: int
    params: int
    size_bits: int


@dataclass(frozen=True)
class CostReport:
    """Per-op costs and totals of a model for one image of ``input_shape`` (channels, height, width).

    Attributes:
        layers: the ops in forward order (attention matmuls right after their ``qkv``); linear and
            conv layers that did not run in the forward pass come last with 0 MACs (their weights
            still count in the size).
        macs: total MACs.
        bops: total BOPs at the bits the quantizers hold.
        bops_fp32: BOPs with every operand at 32 bits, ``macs × 32 × 32``.
        rel_bops: ``bops / bops_fp32`` (1.0 for a float model).
        size_bytes: model size at the quantizers' bits, rounded up to whole bytes.
        fp_size_bytes: the same model with every parameter and persistent buffer at 32 bits.
        input_size: the input height counted (the side of a square input).
        input_shape: (channels, height, width) of the image counted.
    """

    layers: tuple[LayerCost, ...]
    macs: int
    bops: int
    bops_fp32: int
    rel_bops: float
    size_bytes: int
    fp_size_bytes: int
    input_size: int
    input_shape: tuple[int, int, int] = (0, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the layers as a list of dicts)."""
        d = asdict(self)
        d["layers"] = list(d["layers"])
        d["input_shape"] = list(self.input_shape)
        return d
