"""Measuring F-LBQ distortion curves on a model.

For every unit u and candidate bit width b: quantize only that unit's weights (symmetric, one
least-MSE scale per output channel, for layer and group units alike: a group shares its bit width,
not its scales, as the plan will be applied), run the calibration images and record ``D_u(b)`` =
mean squared difference of the target features (pre-logits by default) from full precision. Everything else stays float.

Cost: each step's input is cached once (:mod:`vitcompress.models.chain`); a unit reruns only the
steps from its own block onward, the quantized weight of a layer at b bits is computed once for
all of its groups, and only the unit's rows of the weight are swapped in and back. ``vit-fmnist``
with 64 images and ``group:32`` takes minutes on two cores
(docs/bitalloc.md gives the measured times).

Monotonicity: a measured curve can rise by noise where the distortion is tiny (e.g. 8 vs 7 bits);
the solvers need non-increasing curves, so the curve is replaced by its running minimum over
increasing bits (an extra bit never has to hurt: the unit may keep the better lower-bit weights'
error). How many values that changed, and by how much at most, is logged and returned in ``info``.

Work happens on the model's device. Under ``torchrun`` (:mod:`vitcompress.distributed`) the
measurements (one per unit and bit width) are dealt round robin to the processes and gathered exactly:
every process gets the curves one process measures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from itertools import groupby

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vitcompress import distributed
from vitcompress.config import QuantSpec
from vitcompress.data.calib import first_images
from vitcompress.device import model_device
from vitcompress.errors import ConfigError, StateError
from vitcompress.methods.flbq.apply import ACT_ROLES
from vitcompress.methods.flbq.curves import Curves, UnitCurve
from vitcompress.methods.flbq.units import WeightUnit, backbone_layers, parse_unit, weight_units
from vitcompress.models.chain import model_chain
from vitcompress.nn.convert import set_quantizers
from vitcompress.quant.quantizer import make_quantizer

log = logging.getLogger(__name__)
DEFAULT_BITS = (2, 3, 4, 5, 6, 7, 8)


def quantized_weight(w: torch.Tensor, bits: int, name: str = "") -> torch.Tensor:
    """``w`` fake-quantized at ``bits``: symmetric, one least-MSE scale per output channel."""
    spec = QuantSpec(bits, "symmetric", "channel", observer="mse")
    qz = make_quantizer(spec, name, channel_axis=0, num_channels=w.shape[0]).to(w.device)  # the weight's device
    qz.observe(w.detach())
    qz.compute_qparams()
    with torch.no_grad():
        return qz(w.detach())


def _check_float(model: nn.Module) -> None:
    from vitcompress.quant.quantizer import Quantizer

    if any(isinstance(m, Quantizer) for m in model.modules()):
        raise StateError("distortion curves are measured on the float model; pass the model before quantize_")


def check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    """``bits`` sorted; ConfigError unless they are distinct integers in 2..8."""
    out = tuple(bits)
    if not out or any(isinstance(b, bool) or b not in range(2, 9) for b in out) or len(set(out)) != len(out):
        raise ConfigError(f"bits must be distinct integers in 2..8, got {list(out)!r}")
    return tuple(sorted(out))


@torch.no_grad()
def measure_curves(
    model: nn.Module,
    calib: Iterable,
    unit: str = "layer",
    bits: Sequence[int] = DEFAULT_BITS,
    target: str = "pre_logits",
    n_images: int = 64,
    batch_size: int = 64,
    exclude: tuple[str, ...] = (),
    info: dict | None = None,
) -> Curves:
    """The distortion curves of every backbone unit of a float timm ViT/DeiT/Swin.

    Args:
        model: the float model (left unchanged: every weight is restored).
        calib: calibration images (Dataset, loader or batches); the first ``n_images`` are used.
        unit: ``"layer"`` or ``"group:G"`` (G output channels per unit).
        bits: candidate bit widths (2..8).
        target: ``pre_logits`` (the backbone features the F-LBQ paper compares), ``logits``, or a module inside a
            block (e.g. ``blocks.3`` or ``layers.2.blocks.5.mlp``): the MSE of its output.
        n_images: calibration images (the F-LBQ paper: 64).
        batch_size: images per forward.
        exclude: globs of backbone layers to leave out (they keep the recipe's bits).
        info: if a dict, filled with ``seconds``, ``forwards``, ``monotone_fixes``, ``max_fix_rel``.

    Raises:
        StateError: the model is already quantized.
        ConfigError: bad ``unit``/``bits``/``target``, or G does not divide a layer (names it).
        UnsupportedModelError: not a timm ViT/DeiT/Swin.
    """
    start = time.perf_counter()
    _check_float(model)
    bits = check_bits(bits)
    parse_unit(unit)  # a bad unit fails before the images are read
    distributed.init_from_env()
    model.eval()
    x = first_images(calib, n_images, batch_size, device=model_device(model))
    chain = model_chain(model, target, check=x[:2])  # 2 images prove the chain; more cost forwards
    cached = [chain.inputs(b) for b in x.split(batch_size)]  # per batch: (inputs of every step, reference output)
    units = weight_units(model, unit, backbone_layers(model, exclude))
    steps = _layer_steps(chain, units, target)
    # one measurement per (layer, bits, unit); a layer's quantized weight at b bits serves all its units, so
    # the processes are dealt whole (layer, bits) pairs, round robin: early (long) and late (short) partial
    # forwards mix in every share
    tasks = [(u.layer, b, u) for u in units for b in bits]
    tasks.sort(key=lambda t: (steps[t[0]], t[0], t[1]))  # stable: units in order within (layer, bits)
    pairs = [list(g) for _, g in groupby(range(len(tasks)), key=lambda t: tasks[t][:2])]
    mine = [t for i in distributed.shard(len(pairs)) for t in pairs[i]]
    values: dict[int, float] = {}
    # progress in steps run (a partial forward from an early block weighs more): an ETA that holds early on
    depth = {layer: len(chain.steps) - step for layer, step in steps.items()}
    work = sum(depth[tasks[t][0]] for t in mine)
    bar = tqdm(total=work, desc=f"curves ({unit})", unit="step", **distributed.progress_kwargs())
    for layer, group in groupby(mine, key=lambda t: tasks[t][0]):
        weight = model.get_submodule(layer).weight
        _measure_layer(weight, [(t, tasks[t]) for t in group], chain, cached, steps[layer], values, bar)
    bar.close()
    gathered = distributed.gather_values(values, len(tasks))
    dist: dict[str, list[float]] = {u.name: [] for u in units}
    for (_, _, u), d in sorted(zip(tasks, gathered), key=lambda e: e[0][1]):  # bits ascending, stable
        dist[u.name].append(d)
    forwards = len(tasks)
    curves, fixes, worst = _monotone_curves(units, bits, dist)
    seconds = time.perf_counter() - start
    log.info(
        "curves: %d units x %d bits, %d images, %d forwards, %.1f s; %d values made monotone (max %.2g rel)",
        len(units),
        len(bits),
        len(x),
        forwards,
        seconds,
        fixes,
        worst,
    )
    if info is not None:
        info.update(
            seconds=seconds, forwards=forwards, monotone_fixes=fixes, max_fix_rel=worst, images=len(x), units=len(units)
        )
    return curves


def _layer_steps(chain, units: list[WeightUnit], target: str) -> dict[str, int]:
    """The chain step that runs each unit's layer.

    Raises:
        ConfigError: a layer runs after the target (it cannot change the target features).
    """
    steps = {}
    for u in units:
        step = chain.step_of(u.layer)
        if step is None:
            raise ConfigError(
                f"layer {u.layer!r} does not run before the target {target!r}; exclude it "
                f"(exclude=... / it cannot change the target features)"
            )
        steps[u.layer] = step
    return steps


def _measure_layer(weight, tasks, chain, cached, step: int, values: dict[int, float], bar) -> None:
    """``values[t]``: the feature MSE with only unit ``u``'s rows of ``weight`` at ``b`` bits, for each
    ``(t, (layer, b, u))`` of one layer (sorted by ``b``); the weight is restored whatever happens."""
    original = weight.detach().clone()
    wq, wq_bits = None, None
    try:
        for t, (layer, b, u) in tasks:
            if b != wq_bits:
                wq, wq_bits = quantized_weight(original, b, layer), b
            weight[u.start : u.stop] = wq[u.start : u.stop]
            values[t] = _feature_mse(chain, cached, step)
            weight[u.start : u.stop] = original[u.start : u.stop]
            bar.update(len(chain.steps) - step)
    finally:
        weight.copy_(original)


def _feature_mse(chain, cached, step: int) -> float:
    total, count = None, 0
    for inputs, ref in cached:
        out = chain.run(inputs[step], start=step)
        sq = ((out - ref) ** 2).sum(dtype=torch.float64)  # on the device: one sync per measurement
        total = sq if total is None else total + sq
        count += ref.numel()
    return float(total) / count


def _monotone_curves(
    units: list[WeightUnit], bits: tuple[int, ...], dist: dict[str, list[float]]
) -> tuple[Curves, int, float]:
    out, fixes, worst = [], 0, 0.0
    for u in units:
        d = np.asarray(dist[u.name])
        m = np.minimum.accumulate(d)  # bits ascending: D(b) <- min over b' <= b
        changed = m < d
        fixes += int(changed.sum())
        if changed.any():
            worst = max(worst, float(((d - m)[changed] / d[changed]).max()))
        out.append(UnitCurve(u.name, u.size, bits, tuple(m.tolist())))
    return Curves(tuple(out)), fixes, worst


@torch.no_grad()
def weight_only_distortion(
    qmodel: nn.Module, fp_model: nn.Module, images: torch.Tensor, target: str = "pre_logits"
) -> float:
    """Measured distortion of a plan: the feature MSE of ``qmodel`` with only its weight quantizers
    on (activation quantizers off for the measurement, then back on), against ``fp_model``."""
    images = images.to(model_device(qmodel))
    set_quantizers(qmodel, False, ACT_ROLES)
    try:
        got = model_chain(qmodel, target).run(images)
    finally:
        set_quantizers(qmodel, True, ACT_ROLES)
    ref = model_chain(fp_model, target).run(images)
    return float(((got - ref) ** 2).mean())
