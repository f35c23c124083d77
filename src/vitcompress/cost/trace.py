"""Following tensors through one forward pass: which products run, on what, fed by which quantizer.

:class:`OpTracer` is a ``TorchDispatchMode``: it sees every ATen op of the probing forward and keeps,
for each live tensor, an :class:`Origin`:

- ``dynamic``: computed from the input image (an activation) or not (weights, buffers, constants);
- ``param``: for a non-dynamic tensor, the parameter it was computed from (``t(weight)``, a
  standardised or fake-quantized weight), so ``F.linear(x, self.qkv.weight)`` is a product with
  ``qkv``'s weight wherever it is called from;
- ``bits``: the bit width of the quantizer whose output this is, carried through views, copies,
  concatenation and scaling by a constant (``q * scale``): the bits that actually feed a product;
- ``probs``: computed from a softmax output (attention probabilities, also through talking-heads
  linears), until the next activation × activation product;
- ``scores``: computed from that activation × activation product, up to a softmax (which marks the
  product as attention scores).

A product of two activations is an activation × activation matmul; a product with a parameter is
that parameter's weight op. Each is recorded with the module running it (:meth:`enter`/:meth:`leave`
are called by module hooks) as an :class:`OpEvent`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from vitcompress.cost.macs import SOFTMAX_OPS, MacCall, mac_calls

aten = torch.ops.aten

# ops whose output holds the same quantized values as their (first) input: the bits carry through
_VIEWS = {
    aten.view,
    aten._unsafe_view,
    aten.reshape,
    aten.t,
    aten.transpose,
    aten.permute,
    aten.expand,
    aten.unsqueeze,
    aten.squeeze,
    aten.select,
    aten.slice,
    aten.split,
    aten.split_with_sizes,
    aten.unbind,
    aten.chunk,
    aten.alias,
    aten.detach,
    aten.clone,
    aten.contiguous,
    aten._to_copy,
    aten.as_strided,
    aten.flatten,
    aten.roll,
    aten.index_select,
    aten.repeat,
    aten.cat,
}
# scaling by a constant keeps the integer codes (the scale folds into the requantization)
_SCALINGS = {aten.mul, aten.div}


@dataclass(frozen=True)
class Origin:
    """What is known about one tensor (see the module docstring)."""

    dynamic: bool = False
    param: int | None = None
    bits: float | None = None
    probs: bool = False
    scores: int | None = None


STATIC = Origin()


@dataclass
class Frame:
    """A module call in progress: its path and how many activation products it has run."""

    path: str
    products: int = 0


@dataclass
class OpEvent:
    """One product seen in the forward pass.

    Attributes:
        index: order of the product in the whole pass (``Origin.scores`` refers to it).
        macs: multiply-accumulates.
        frames: the module paths running, outermost first.
        param: id of the weight (None: an activation × activation product).
        kind: ``"linear"`` / ``"conv"`` for weight ops, ``"matmul"`` otherwise.
        a_bits, b_bits: the bits feeding each operand (None: no quantizer output reached it); for a
            weight op ``a_bits`` is the activation's.
        call: (path, product number) of the innermost module call, for activation products.
        part: ``"qk"``/``"av"`` of a fused attention; ``probs``: an operand came from a softmax;
            ``scores``: the output reached a softmax (set later).
        out_channels: weight ops: output channels (each does the same work).
    """

    index: int
    macs: int
    frames: tuple[str, ...]
    param: int | None
    kind: str
    a_bits: float | None
    b_bits: float | None
    call: tuple[str, int] | None = None
    part: str | None = None
    probs: bool = False
    scores: bool = False
    out_channels: int = 0


class OpTracer(TorchDispatchMode):
    """Records an :class:`OpEvent` for each product run while active.

    Args:
        params: the model's parameters by id (products with them are weight ops).
    """

    def __init__(self, params: dict[int, torch.Tensor]):
        super().__init__()
        self.params = params
        self.events: list[OpEvent] = []
        self.stack: list[Frame] = []
        self._origins: dict[int, tuple[weakref.ref, Origin]] = {}
        for p in params.values():
            self.set_origin(p, Origin(param=id(p)))

    # -- the table of origins ------------------------------------------------------------------------

    def origin(self, t: torch.Tensor) -> Origin:
        entry = self._origins.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else STATIC

    def set_origin(self, t: torch.Tensor, origin: Origin) -> None:
        key = id(t)
        if origin == STATIC:
            self._origins.pop(key, None)
            return
        # the entry goes with the tensor (ids are reused once it is freed)
        self._origins[key] = (weakref.ref(t, lambda _, k=key: self._origins.pop(k, None)), origin)

    def mark_input(self, x: torch.Tensor) -> None:
        self.set_origin(x, Origin(dynamic=True))

    def tag_bits(self, t: torch.Tensor, bits: float) -> None:
        """``t`` is the output of a quantizer of ``bits`` bits."""
        o = self.origin(t)
        self.set_origin(t, Origin(o.dynamic, o.param, bits, o.probs, o.scores))

    # -- module calls --------------------------------------------------------------------------------

    def enter(self, path: str) -> None:
        self.stack.append(Frame(path))

    def leave(self) -> None:
        if self.stack:
            self.stack.pop()

    # -- the ops -------------------------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        origins = [self.origin(t) for t in inputs]
        calls = mac_calls(packet, args, out)
        result = self._products(calls, origins) if calls else self._propagate(packet, args, origins)
        if result != STATIC:
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.set_origin(t, result)
        return out

    def _propagate(self, packet, args: tuple, origins: list[Origin]) -> Origin:
        dynamic = [o for o in origins if o.dynamic]
        if not dynamic:  # a weight or constant: remember which parameter it comes from
            param = next((o.param for o in origins if o.param is not None), None)
            return Origin(param=param)
        first = dynamic[0]
        probs = packet in SOFTMAX_OPS or any(o.probs for o in dynamic)
        if packet in SOFTMAX_OPS:
            if first.scores is not None:
                self.events[first.scores].scores = True
            return Origin(dynamic=True, probs=True)
        return Origin(dynamic=True, bits=self._carried_bits(packet, args, origins), probs=probs, scores=first.scores)

    def _carried_bits(self, packet, args: tuple, origins: list[Origin]) -> float | None:
        dynamic = [o for o in origins if o.dynamic]
        bits = {o.bits for o in dynamic}
        if len(bits) != 1 or None in bits:
            return None
        if packet in _VIEWS:
            return bits.pop()
        if packet in _SCALINGS and len(dynamic) == 1 and isinstance(args[0], torch.Tensor):
            other = args[1] if len(args) > 1 else None
            constant = not isinstance(other, torch.Tensor) or other.numel() == 1
            return bits.pop() if constant and self.origin(args[0]).dynamic else None
        return None

    def _products(self, calls: list[MacCall], origins: list[Origin]) -> Origin:
        first_index = len(self.events)
        for call in calls:
            self.events.append(self._event(call))
        # the output of an activation product: an activation that may become attention scores
        if not any(o.dynamic for o in origins):
            return Origin(param=next((o.param for o in origins if o.param is not None), None))
        if self.events[-1].param is not None:  # a weight op (talking heads, ...) keeps what its input was
            first = next(o for o in origins if o.dynamic)
            return Origin(dynamic=True, probs=first.probs, scores=first.scores)
        fused = calls[-1].part is not None  # fused attention returns its output, not scores
        return Origin(dynamic=True, scores=None if fused else first_index)

    def _event(self, call: MacCall) -> OpEvent:
        a = self.origin(call.a) if call.a is not None else Origin(dynamic=True)
        b = self.origin(call.b) if call.b is not None else Origin(dynamic=True)
        frames = tuple(f.path for f in self.stack)
        index = len(self.events)
        weight = _weight_operand(a, b)
        if weight is not None:
            act, w = (a, b) if weight == "b" else (b, a)
            tensor = self.params[w.param]
            kind = "conv" if call.conv else "linear"
            return OpEvent(index, call.macs, frames, w.param, kind, act.bits, None, out_channels=tensor.shape[0])
        frame = self.stack[-1] if self.stack else Frame("")
        call_key = (frame.path, frame.products)
        frame.products += 1
        probs = a.probs or b.probs
        return OpEvent(index, call.macs, frames, None, "matmul", a.bits, b.bits, call_key, call.part, probs)


def _weight_operand(a: Origin, b: Origin) -> str | None:
    """Which operand is a weight: one that is not an activation and comes from a parameter."""
    if b.param is not None and not b.dynamic:
        return "b"
    if a.param is not None and not a.dynamic:
        return "a"
    return None
