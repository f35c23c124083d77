"""Quantized attention for any module, by what it computes (BEiT, EVA-02, Swin-V2, CaiT, XCiT, ConViT,
LeViT, Twins, EfficientViT, Hugging Face, ...).

A module whose code runs activation x activation matmuls, softmaxes, fused attention
(``F.scaled_dot_product_attention``) or ``F.linear`` on a child linear's weight (found by
:func:`vitcompress.nn.ops.trace_ops`) becomes an instance of a subclass of its own class (same state,
same code, see :func:`attention.clone_into`) whose ``forward`` runs the original ``forward`` inside a
``TorchFunctionMode`` that intercepts those calls in order and routes their operands through
quantizers. Points are named ``<module>.<op><i>.<operand>``:

- ``matmul<i>.a`` / ``.b`` (``.c`` ...: einsum): the operands of the i-th matmul (role ``qkv``); an
  operand that is this module's softmax output (or a view of it) has no point of its own: the softmax
  point quantized it (channel axis: the contracted one, -1 for ``a``, -2 for ``b``);
- ``softmax<i>.out``: the i-th softmax's output (role ``probs``);
- ``sdpa<i>.q`` / ``.k`` / ``.v`` (``qkv``) and ``.probs`` (``probs``): fused attention, run explicitly
  (``softmax(Q(q)·scale @ Q(k)ᵀ + mask)`` quantized, ``@ Q(v)``) when one of its points is active;
- ``F.linear(x, self.qkv.weight, b)`` uses ``qkv``'s own points (``qkv.input``, ``qkv.weight``).

With every point inactive the original ``forward`` runs untouched: the output equals the float
model's bit for bit.
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vitcompress.config import Recipe
from vitcompress.errors import UnsupportedModelError
from vitcompress.nn.attention import clone_into
from vitcompress.nn.ops import (
    COUNTED,
    KINDS,
    PROBS,
    OpSite,
    innermost_running,
    operands_of,
    running,
    tracking_calls,
)
from vitcompress.quant import Quantizer, make_quantizer

SDPA_POINTS = (("q", "qkv"), ("k", "qkv"), ("v", "qkv"), ("probs", "probs"))


def _active(m: nn.Module) -> bool:
    """A quantizer that quantizes, or an export QDQ module (anything but ``nn.Identity``)."""
    return m.active if isinstance(m, Quantizer) else not isinstance(m, nn.Identity)


class OpPoints(nn.Module):
    """The quantizers of one op of a :class:`GenericQuantOps` module (``<operand>_quantizer`` children)."""

    def point(self, operand: str) -> nn.Module | None:
        return self._modules.get(f"{operand}_quantizer")

    def any_active(self) -> bool:
        return any(_active(m) for m in self.children())


class GenericQuantOps:
    """Mixin of the quantized subclass of an attention module (see the module docstring).

    Attributes:
        op_points: names of the op children (``matmul0``, ``softmax0``, ``sdpa0``) that hold quantizers.
        unquantized_ops: ops of this module with no points (a matmul with a parameter operand).
        functional_linears: paths (relative) of the linears this module calls through ``F.linear``.
        explicit: run the intercepting forward even when no point is active (the export copy).
    """

    op_points: tuple[str, ...] = ()
    unquantized_ops: tuple[str, ...] = ()
    functional_linears: tuple[str, ...] = ()
    explicit: bool = False

    def ops_active(self) -> bool:
        if self.explicit:
            return True
        linears = (self.get_submodule(p) for p in self.functional_linears)
        quantizers = [q for lin in linears for q in lin.children() if isinstance(q, Quantizer)]
        return any(getattr(self, op).any_active() for op in self.op_points) or any(q.active for q in quantizers)

    def forward(self, *args, **kwargs):
        with running(self):
            if not self.ops_active():
                return super().forward(*args, **kwargs)
            with tracking_calls(), _OpsMode(self):
                return super().forward(*args, **kwargs)


def _linear_args(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    names = ("input", "weight", "bias")
    vals = [args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names)]
    return vals[0], vals[1], vals[2]


def _with_operands(func, args: tuple, new: list[torch.Tensor]) -> tuple:
    """``args`` with its tensor operands replaced by ``new`` (in order)."""
    if func is torch.einsum:
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            return (args[0], list(new))
        return (args[0], *new)
    it = iter(new)
    return tuple(next(it) if isinstance(a, torch.Tensor) else a for a in args)


class _OpsMode(TorchFunctionMode):
    """Routes the module's own matmul / softmax / SDPA / functional-linear calls through its points."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.counts: dict[str, int] = defaultdict(int)
        self.linears = {id(module.get_submodule(p).weight): module.get_submodule(p) for p in module.functional_linears}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = KINDS.get(func)
        if kind is None or innermost_running() is not self.module:
            return func(*args, **kwargs)
        if kind == "linear":
            x, w, b = _linear_args(args, kwargs)
            lin = self.linears.get(id(w))
            return func(*args, **kwargs) if lin is None else lin.functional_forward(x, b)
        if kind not in COUNTED:
            return func(*args, **kwargs)
        name = f"{kind}{self.counts[kind]}"
        self.counts[kind] += 1
        points = self.module._modules.get(name)
        if points is None:
            return func(*args, **kwargs)
        if kind == "softmax":
            return points.out_quantizer(func(*args, **kwargs))
        if kind == "sdpa":
            return _sdpa(points, args, kwargs, self.module.explicit) if points.any_active() else func(*args, **kwargs)
        ops = operands_of(func, args, kwargs)
        new = [t if points.point(_OPERANDS[i]) is None else points.point(_OPERANDS[i])(t) for i, t in enumerate(ops)]
        return func(*_with_operands(func, args, new), **kwargs)


_OPERANDS = "abcdefgh"


def _sdpa(points: OpPoints, args: tuple, kwargs: dict, export: bool) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with explicit, quantized matmuls (same arguments)."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    a = {n: args[i] for i, n in enumerate(names) if i < len(args)} | kwargs
    q, v = points.q_quantizer(a["query"]), points.v_quantizer(a["value"])
    # the export quantizes kᵀ (its QDQ's axis moved to -2), so that DequantizeLinear feeds the MatMul
    kt = points.k_quantizer(a["key"].transpose(-2, -1)) if export else points.k_quantizer(a["key"]).transpose(-2, -1)
    if a.get("enable_gqa") and kt.shape[-3] != q.shape[-3]:
        kt = kt.repeat_interleave(q.shape[-3] // kt.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if a.get("scale") is None else a["scale"]
    # as timm's explicit path: (q·scale) @ kᵀ; the export scales the scores instead, so that the
    # MatMul reads the DequantizeLinear outputs directly (the same values up to float rounding)
    scores = (q @ kt) * scale if export else (q * scale) @ kt  # (B, H, L, S)
    if a.get("is_causal"):
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    mask = a.get("attn_mask")
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probs = points.probs_quantizer(scores.softmax(dim=-1))
    if a.get("dropout_p", 0.0):
        probs = F.dropout(probs, a["dropout_p"])
    return probs @ v  # (B, H, L, Dv)


# ---- conversion ------------------------------------------------------------------------------------
def _points_of(site: OpSite, recipe: Recipe, name: str) -> OpPoints | None:
    """The quantizers of one op site, or None if it has none (a matmul with a weight/constant operand)."""
    points = OpPoints()
    prefix = f"{name}.{site.name}"
    if site.kind == "softmax":
        points.out_quantizer = make_quantizer(recipe.spec_for(f"{prefix}.out", "probs"), f"{prefix}.out", -1, None)
        points.out_quantizer.role = "probs"
    elif site.kind == "sdpa":
        for i, (operand, role) in enumerate(SDPA_POINTS):
            channels = None if role == "probs" else site.shapes[i][-1]
            qz = make_quantizer(recipe.spec_for(f"{prefix}.{operand}", role), f"{prefix}.{operand}", -1, channels)
            qz.role = role
            setattr(points, f"{operand}_quantizer", qz)
    elif site.act_only:
        einsum = len(site.operands) != 2
        for i, what in enumerate(site.operands):
            if what == PROBS:
                continue
            axis = -1 if einsum or i == 0 else -2  # the contracted axis of a @ b
            channels = site.shapes[i][axis] if len(site.shapes[i]) >= -axis else None
            point = f"{prefix}.{_OPERANDS[i]}"
            qz = make_quantizer(recipe.spec_for(point, "qkv"), point, axis, channels)
            qz.role = "qkv"
            setattr(points, f"{_OPERANDS[i]}_quantizer", qz)
    else:
        return None
    return points


_CLASSES: dict[type, type] = {}


def quant_class(base: type) -> type:
    """The quantized subclass of ``base`` (one per class, importable from this module for pickling)."""
    if base not in _CLASSES:
        name = f"Quant_{base.__module__.replace('.', '_')}_{base.__qualname__.replace('.', '_')}"
        cls = type(name, (GenericQuantOps, base), {"__module__": __name__, "__qualname__": name})
        setattr(sys.modules[__name__], name, cls)
        _CLASSES[base] = cls
    return _CLASSES[base]


def to_generic(module: nn.Module, sites: list[OpSite], linears: list[str], recipe: Recipe, name: str) -> nn.Module:
    """A quantized copy of ``module`` (sharing its state) with points for its op ``sites`` and routing for
    the ``linears`` (relative paths) it calls through ``F.linear``."""
    q = clone_into(quant_class(type(module)), module)
    op_points, unquantized = [], []
    for site in sites:
        points = _points_of(site, recipe, name)
        if points is None:
            unquantized.append(site.name)
            continue
        if site.name in q._modules or hasattr(type(module), site.name) or site.name in q.__dict__:
            raise UnsupportedModelError(f"{name}: attribute {site.name!r} exists; cannot attach its quantizers")
        setattr(q, site.name, points)
        op_points.append(site.name)
    q.op_points, q.unquantized_ops, q.functional_linears = tuple(op_points), tuple(unquantized), tuple(linears)
    return q


def is_attention(m: nn.Module) -> bool:
    """Whether ``m`` is a generic quantized module that runs an activation x activation matmul."""
    return isinstance(m, GenericQuantOps) and any(op.startswith(("matmul", "sdpa")) for op in m.op_points)


def attention_quantized(m: GenericQuantOps) -> bool:
    """Whether every matmul of ``m`` and every softmax has an active point on each operand."""
    if any(op.startswith(("matmul", "sdpa")) for op in m.unquantized_ops):
        return False
    return all(all(_active(qz) for qz in getattr(m, op).children()) for op in m.op_points)
