"""The probing forward pass: one zero image through the model, every product it runs recorded.

The pass runs under :class:`~vitcompress.cost.trace.OpTracer` (every ATen op, so ``nn.Linear``,
``F.linear`` on a module's weight, ``@``, ``bmm``, ``einsum``, fused ``scaled_dot_product_attention``
and convolutions are all seen as they run), with a hook on every module to know which one runs each
product, and with every quantizer passed through: it returns its input unchanged (no calibration is
needed) but marks it with its bit width, so that the bits feeding each product are the ones of the
quantizer that actually reaches it. The quantizers stay enabled, so a quantized module takes the
path it takes when quantizing (explicit attention matmuls instead of fused attention).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vitcompress.cost.bits import act_bits, quantizer_handles, quantizer_module_ids
from vitcompress.cost.trace import OpEvent, OpTracer
from vitcompress.models.inputs import runs_on

log = logging.getLogger(__name__)


@dataclass
class Probe:
    """What one probing forward saw.

    Attributes:
        events: the products, in the order they ran.
        params: the model's parameters by id.
        owners: parameter id -> every (module path, attribute) holding it (a weight shared by two
            modules, e.g. MixA-Q's two branches, has two owners).
    """

    events: list[OpEvent]
    params: dict[int, torch.Tensor]
    owners: dict[int, list[tuple[str, str]]]


def probe(model: nn.Module, shape: tuple[int, int, int]) -> Probe:
    """Run one zero image of ``shape`` (C, H, W; batch 1) through ``model`` and record its products.

    The model's train/eval flags, its quantizers and the grad mode are left as found.

    Raises:
        ConfigError: the model does not run on that shape (the message names ``--input-size``).
    """
    owners: dict[int, list[tuple[str, str]]] = {}
    params: dict[int, torch.Tensor] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is not None:
                params[id(p)] = p
                owners.setdefault(id(p), []).append((path, attr))
    tracer = OpTracer(params)
    p0 = next(iter(params.values()), None)
    device = p0.device if p0 is not None else torch.device("cpu")
    dtype = p0.dtype if p0 is not None and p0.is_floating_point() else torch.float32
    x = torch.zeros(1, *shape, device=device, dtype=dtype)
    tracer.mark_input(x)
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(_eval_mode(model))
        stack.enter_context(_module_frames(model, tracer))
        stack.enter_context(_traced_quantizers(model, tracer))
        stack.enter_context(tracer)
        with runs_on(model, shape):
            model(x)
    log.debug("cost probe %s: %d products", shape, len(tracer.events))
    return Probe(tracer.events, params, owners)


@contextlib.contextmanager
def _module_frames(model: nn.Module, tracer: OpTracer) -> Iterator[None]:
    """Tell the tracer which module runs (quantizers excluded: they compute no products)."""
    skip = quantizer_module_ids(model)
    hooks = []
    try:
        for path, module in model.named_modules():
            if id(module) in skip:
                continue
            hooks.append(module.register_forward_pre_hook(lambda m, a, p=path: tracer.enter(p)))
            hooks.append(module.register_forward_hook(lambda m, a, o: tracer.leave(), always_call=True))
        yield
    finally:
        for h in hooks:
            h.remove()


def _traced_forward(qz: nn.Module, tracer: OpTracer):
    bits = act_bits(qz) if getattr(qz, "enabled", False) else None

    def forward(x, *args, **kwargs):
        if not isinstance(x, torch.Tensor):
            return x
        y = x.view_as(x)  # a new tensor object: only what consumes the quantizer's output gets its bits
        if bits is not None:
            tracer.tag_bits(y, bits)
        return y

    return forward


@contextlib.contextmanager
def _traced_quantizers(model: nn.Module, tracer: OpTracer) -> Iterator[None]:
    """Every quantizer passes its input through, marked with its bits; restored afterwards.

    A quantizer that is not an ``nn.Module`` (the duck-typed contract of :mod:`vitcompress.cost.bits`)
    cannot be patched: it is disabled for the pass (its bits are then read from its module)."""
    patched: list[tuple[nn.Module, object]] = []
    disabled: list[tuple[object, bool]] = []
    try:
        for qz in quantizer_handles(model):
            if isinstance(qz, nn.Module):
                patched.append((qz, qz.__dict__.get("forward")))
                qz.forward = _traced_forward(qz, tracer)
            elif hasattr(qz, "enabled"):
                disabled.append((qz, qz.enabled))
                qz.enabled = False
        yield
    finally:
        for qz, own in patched:
            if own is None:
                del qz.forward
            else:
                qz.forward = own
        for qz, flag in disabled:
            qz.enabled = flag


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
