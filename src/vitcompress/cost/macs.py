"""Multiply-accumulates of the ATen ops a forward pass runs: matrix products, convolutions, fused attention.

The cost probe sees every op at the ATen level (below ``F.linear``, ``@``, ``torch.einsum``,
``F.scaled_dot_product_attention`` and ``nn.Conv2d``, which all reach one of these), so what a model
computes is counted whatever Python form it takes. One op is one or two :class:`MacCall` (fused
attention: the score product q·kᵀ and the output product probs·v). Bias additions, softmax,
normalisations and element-wise products are not multiply-accumulates of two operands and are not
counted, as in ``torch.utils.flop_counter`` (FLOPs = 2 × MACs there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

aten = torch.ops.aten


@dataclass(frozen=True)
class MacCall:
    """One product of two operands inside an op.

    Attributes:
        macs: multiply-accumulates.
        a, b: the operand tensors (for a convolution: input, weight); None for an operand a fused op
            computes inside (the probabilities of fused attention, the heads of fused multi-head attention).
        part: ``"qk"`` / ``"av"`` for the two products of a fused attention, else None.
        conv: a convolution (else a matrix product).
    """

    macs: int
    a: torch.Tensor | None
    b: torch.Tensor | None
    part: str | None = None
    conv: bool = False


def _mm(args: tuple, out) -> list[MacCall]:
    a, b = args[0], args[1]  # (n, k) @ (k, m)
    return [MacCall(a.shape[0] * a.shape[1] * b.shape[1], a, b)]


def _addmm(args: tuple, out) -> list[MacCall]:
    return _mm(args[1:], out)  # self (the bias) is added, not multiplied


def _bmm(args: tuple, out) -> list[MacCall]:
    a, b = args[0], args[1]  # (B, n, k) @ (B, k, m)
    return [MacCall(a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2], a, b)]


def _baddbmm(args: tuple, out) -> list[MacCall]:
    return _bmm(args[1:], out)


def _mv(args: tuple, out) -> list[MacCall]:
    a, v = args[0], args[1]  # (n, k) @ (k,)
    return [MacCall(a.shape[0] * a.shape[1], a, v)]


def _addmv(args: tuple, out) -> list[MacCall]:
    return _mv(args[1:], out)


def _dot(args: tuple, out) -> list[MacCall]:
    return [MacCall(args[0].numel(), args[0], args[1])]


def _conv(transposed_arg: int | None) -> Callable[[tuple, object], list[MacCall]]:
    def count(args: tuple, out) -> list[MacCall]:
        x, w = args[0], args[1]
        transposed = transposed_arg is not None and len(args) > transposed_arg and bool(args[transposed_arg])
        # every output value costs C_in/groups · k… MACs (weight: C_out, C_in/groups, k…); transposed,
        # every input value meets C_out/groups · k… weights (weight: C_in, C_out/groups, k…)
        positions = x.numel() if transposed else out.numel()
        return [MacCall(positions * math.prod(w.shape[1:]), x, w, conv=True)]

    return count


def _sdpa(layout: str) -> Callable[[tuple, object], list[MacCall]]:
    """Fused attention: q·kᵀ and probs·v. ``layout`` "bhld" (the ``_scaled_dot_product_*`` ops) or
    "blhd" (the lower ``_flash/_efficient_attention_forward`` ops); grouped-query attention broadcasts
    k and v over the query heads."""

    def count(args: tuple, out) -> list[MacCall]:
        q, k, v = args[0], args[1], args[2]
        if layout == "bhld":
            (b, h, lq, e), s, ev = q.shape, k.shape[-2], v.shape[-1]
        else:
            (b, lq, h, e), s, ev = q.shape, k.shape[1], v.shape[-1]
        return [MacCall(b * h * lq * s * e, q, k, part="qk"), MacCall(b * h * lq * s * ev, None, v, part="av")]

    return count


def _native_mha(args: tuple, out) -> list[MacCall]:
    """``nn.MultiheadAttention``'s inference fast path, one op: the q/k/v projections with the packed
    in-projection weight, q·kᵀ and probs·v per head, and the output projection."""
    q, k, v, embed, heads, w_in, _, w_out = args[:8]
    (b, lq, _), lk, hd = q.shape, k.shape[-2], embed // heads
    return [
        MacCall(b * lq * embed * embed, q, w_in),
        MacCall(b * lk * embed * embed, k, w_in),
        MacCall(b * lk * embed * embed, v, w_in),
        MacCall(b * heads * lq * lk * hd, None, None, part="qk"),
        MacCall(b * heads * lq * lk * hd, None, None, part="av"),
        MacCall(b * lq * embed * embed, None, w_out),
    ]


# the ops a forward pass reaches with its products; composite ops (linear, matmul, einsum, conv2d,
# scaled_dot_product_attention on its math path) decompose into these before the probe sees them
MAC_OPS: dict = {
    aten.mm: _mm,
    aten.addmm: _addmm,
    aten.bmm: _bmm,
    aten.baddbmm: _baddbmm,
    aten.mv: _mv,
    aten.addmv: _addmv,
    aten.dot: _dot,
    aten.convolution: _conv(6),
    aten._convolution: _conv(6),
    aten.convolution_overrideable: _conv(6),
    aten.cudnn_convolution: _conv(None),
    aten.mkldnn_convolution: _conv(None),
    aten._slow_conv2d_forward: _conv(None),
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa("bhld"),
    aten._scaled_dot_product_flash_attention: _sdpa("bhld"),
    aten._scaled_dot_product_efficient_attention: _sdpa("bhld"),
    aten._scaled_dot_product_cudnn_attention: _sdpa("bhld"),
    aten._flash_attention_forward: _sdpa("blhd"),
    aten._efficient_attention_forward: _sdpa("blhd"),
    aten._native_multi_head_attention: _native_mha,
}
SOFTMAX_OPS = frozenset({aten._softmax, aten.softmax, aten._safe_softmax})


def mac_calls(packet, args: tuple, out) -> list[MacCall]:
    """The products of one op (empty when it multiplies nothing); ``packet`` is ``func._overloadpacket``,
    ``out`` its result (a convolution's output size comes from it)."""
    count = MAC_OPS.get(packet)
    if count is None:
        return []
    return count(args, out[0] if isinstance(out, (tuple, list)) else out)
