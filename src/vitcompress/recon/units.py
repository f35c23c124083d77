"""The units of reconstruction: which layers and activation quantizers each step of the model's chain runs.

A unit is one step of :func:`vitcompress.models.chain.model_chain` (the patch embedding, a transformer
block, a Swin patch merging, the final norm with the classifier). Which quantizers a step runs is found by
running it, not from module names: a forward pre-hook on every quantizer records the step in progress, so
the classifier (run by the last step, outside ``norm``) and any layer a step calls belong to that step.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from vitcompress.models.chain import Chain
from vitcompress.nn.convert import point_role, quantization_points
from vitcompress.quant import Quantizer
from vitcompress.quant.quantizer import PTFQuantizer, UniformQuantizer
from vitcompress.recon.adaround import roundable


@dataclass
class Unit:
    """One step of the chain and what reconstruction learns in it.

    Attributes:
        step: index in the chain.
        name: the step's name (``blocks.3``, ``layers.1.downsample``, ``norm``).
        layers: ``(name, layer)`` of the linears/convs whose weight rounding is learned.
        scales: ``(point, quantizer)`` of the activation quantizers whose step size is learned.
        activations: ``(point, quantizer)`` of every active activation quantizer the step runs (QDrop drops them).
    """

    step: int
    name: str
    layers: list[tuple[str, nn.Module]] = field(default_factory=list)
    scales: list[tuple[str, Quantizer]] = field(default_factory=list)
    activations: list[tuple[str, Quantizer]] = field(default_factory=list)

    @property
    def learns(self) -> bool:
        return bool(self.layers or self.scales)

    def state_keys(self) -> list[str]:
        """The model ``state_dict`` keys reconstruction changes in this unit."""
        keys = [f"{name}.weight" for name, _ in self.layers]
        return keys + [f"{point}_quantizer.scale" for point, _ in self.scales]


def _learnable_scale(qz: Quantizer) -> bool:
    if not (qz.active and qz.is_calibrated):
        return False
    if isinstance(qz, UniformQuantizer):
        return qz.spec.granularity != "token"
    return isinstance(qz, PTFQuantizer)


@torch.no_grad()
def find_units(model: nn.Module, chain: Chain, x: torch.Tensor) -> list[Unit]:
    """Every step of ``chain`` as a :class:`Unit`, found by running the quantized model on images ``x``."""
    points = {id(qz): (name, qz) for name, qz in quantization_points(model)}
    seen: list[list[str]] = [[] for _ in chain.steps]
    current = [0]

    def record(qz: nn.Module, _inputs: tuple) -> None:
        name, _ = points[id(qz)]
        if name not in seen[current[0]]:
            seen[current[0]].append(name)

    handles = [qz.register_forward_pre_hook(record) for _, qz in points.values()]
    try:
        for i, step in enumerate(chain.steps):
            current[0] = i
            x = step(x)
    finally:
        for h in handles:
            h.remove()
    by_name = dict(points.values())
    return [_unit(model, i, chain.names[i], [(n, by_name[n]) for n in names]) for i, names in enumerate(seen)]


def _unit(model: nn.Module, step: int, name: str, quantizers: list[tuple[str, Quantizer]]) -> Unit:
    unit = Unit(step, name)
    for point, qz in quantizers:
        owner = point.rsplit(".", 1)[0]
        if point_role(point, qz) == "weight":
            if roundable(qz):
                unit.layers.append((owner, model.get_submodule(owner)))
        elif qz.active:
            unit.activations.append((point, qz))
            if _learnable_scale(qz):
                unit.scales.append((point, qz))
    return unit


@contextmanager
def learnable_scales(unit: Unit) -> Iterator[list[nn.Parameter]]:
    """The step sizes of ``unit``'s activation quantizers as Parameters while inside (LSQ, Esser et al., ICLR
    2020, arXiv:1902.08153); afterwards they are buffers again, holding the learned values."""
    params, swapped = [], []
    try:
        for _, qz in unit.scales:
            if isinstance(qz.scale, nn.Parameter):  # a learnable-scale recipe: it is one already
                params.append(qz.scale)
                continue
            value = qz._buffers.pop("scale")
            qz.scale = nn.Parameter(value.detach().clone())
            swapped.append(qz)
            params.append(qz.scale)
        yield params
    finally:
        for qz in swapped:
            value = qz._parameters.pop("scale").detach()
            qz.register_buffer("scale", value)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """The model's own parameters need no gradient while reconstruction learns its variables."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def quantizers_off(model: nn.Module) -> Iterator[None]:
    """Every quantizer disabled (the float model, bit for bit) while inside."""
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False
    try:
        yield
    finally:
        for q, was in zip(quantizers, saved):
            q.enabled = was


@contextmanager
def dropped(unit: Unit, prob: float, generator: torch.Generator) -> Iterator[None]:
    """QDrop (Wei et al., ICLR 2022, arXiv:2203.05740): each element of each activation quantizer's output
    keeps its float value with probability ``prob``, a new draw every call."""
    if prob <= 0:
        yield
        return

    def hook(_m: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        keep = torch.rand(x.shape, generator=generator, device=x.device) < prob
        return torch.where(keep, x, out)

    handles = [qz.register_forward_hook(hook) for _, qz in unit.activations]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
