"""Measuring F-LBQ distortion curves on a model.

For every unit u and candidate bit width b: quantize only that unit's weights (symmetric, one
least-MSE scale per output channel, for layer and group units alike: a group shares its bit width,
not its scales, as the plan will be applied), run the calibration images and record ``D_u(b)`` =
mean squared difference of the target features (pre-logits by default) from full precision. Everything else stays float.

Cost: each step's input is cached once (:mod:`vitcompress.models.chain`); a unit reruns only the
steps from its own block onward, and the quantized weight of a layer at b bits is computed once for
all of its groups. ``vit-fmnist`` with 64 images and ``group:32`` takes minutes on two cores
(docs/bitalloc.md gives the measured times).

Monotonicity: a measured curve can rise by noise where the distortion is tiny (e.g. 8 vs 7 bits);
the solvers need non-increasing curves, so the curve is replaced by its running minimum over
increasing bits (an extra bit never has to hurt: the unit may keep the better lower-bit weights'
error). How many values that changed, and by how much at most, is logged and returned in ``info``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vitcompress.config import QuantSpec
from vitcompress.data.calib import first_images
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
    qz = make_quantizer(spec, name, channel_axis=0, num_channels=w.shape[0])
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
    model.eval()
    x = first_images(calib, n_images, batch_size)
    chain = model_chain(model, target, check=x[:batch_size])
    batches = x.split(batch_size)
    cached = [chain.inputs(b) for b in batches]  # per batch: (inputs of every step, reference output)
    units = weight_units(model, unit, backbone_layers(model, exclude))
    by_layer: dict[str, list[WeightUnit]] = {}
    for u in units:
        by_layer.setdefault(u.layer, []).append(u)
    dist = {u.name: [] for u in units}
    bar = tqdm(total=len(units) * len(bits), desc=f"curves ({unit})")
    forwards = 0
    for layer, layer_units in by_layer.items():
        step = chain.step_of(layer)
        if step is None:
            raise ConfigError(
                f"layer {layer!r} does not run before the target {target!r}; exclude it "
                f"(exclude=... / it cannot change the target features)"
            )
        weight = model.get_submodule(layer).weight
        original = weight.detach().clone()
        try:
            for b in bits:
                wq = quantized_weight(original, b, layer)
                for u in layer_units:
                    weight.copy_(original)
                    weight[u.start : u.stop] = wq[u.start : u.stop]
                    dist[u.name].append(_feature_mse(chain, cached, step))
                    forwards += 1
                    bar.update()
        finally:
            weight.copy_(original)
    bar.close()
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


def _feature_mse(chain, cached, step: int) -> float:
    total, count = 0.0, 0
    for inputs, ref in cached:
        out = chain.run(inputs[step], start=step)
        total += float(((out - ref) ** 2).sum())
        count += ref.numel()
    return total / count


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
    set_quantizers(qmodel, False, ACT_ROLES)
    try:
        got = model_chain(qmodel, target).run(images)
    finally:
        set_quantizers(qmodel, True, ACT_ROLES)
    ref = model_chain(fp_model, target).run(images)
    return float(((got - ref) ** 2).mean())
