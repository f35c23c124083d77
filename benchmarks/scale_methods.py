"""Method stages of the scale benchmark: Evol-Q, F-LBQ curves and MixA-Q candidates against the float
forwards each one needs, timed in the same call.

Each stage is ``stage(model, images, quick) -> dict`` with ``seconds`` (the stage), ``float_seconds`` (the
float forwards it cannot avoid: the same partial forwards run on the float model, timed in the same
call), ``ratio`` (their quotient, the overhead of quantization and bookkeeping), ``notes``, and, where
a stage measures a part of the default run, ``projected_seconds`` (the default run at this size,
``ratio`` × its float forwards). ``model`` is a float timm model (left unchanged; the stages work on a
copy, on the model's device), ``images`` a (N, C, H, W) tensor. ``benchmarks/scale.py`` imports them.

Standalone (one model, the chosen stages, JSON on stdout or ``--out``)::

    nice -n 10 python benchmarks/scale_methods.py --model deit_tiny_patch16_224 --images 8 --quick --threads 1
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from vitcompress.config import get_preset  # noqa: E402
from vitcompress.device import model_device, synchronize  # noqa: E402
from vitcompress.methods.evolq import EvolQConfig, evolq_  # noqa: E402
from vitcompress.methods.evolq.allocator import keep_freed_memory  # noqa: E402
from vitcompress.methods.flbq.measure import DEFAULT_BITS, measure_curves  # noqa: E402
from vitcompress.methods.flbq.units import backbone_layers, weight_units  # noqa: E402
from vitcompress.models.chain import Chain, model_chain  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402
from vitcompress.recon.units import quantizers_off  # noqa: E402

GROUP = "group:32"  # divides every layer of DeiT-T/S/B and Swin-T/S/B (widths are multiples of 96 or 192)
FLBQ_DEFAULT_IMAGES = 64  # FLBQConfig.n_images
EVOLQ_DEFAULT = EvolQConfig()


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def _batches(images: torch.Tensor, device: torch.device, batch_size: int = 64) -> list[torch.Tensor]:
    return list(images.to(device).split(batch_size))


_float = quantizers_off  # every quantizer off: the quantized model computes the float model, bit for bit


@torch.no_grad()
def _float_forwards(
    chain: Chain, batches: list[torch.Tensor], counts: dict[int, int], device: torch.device
) -> tuple[float, float]:
    """(seconds of one pass keeping every step's input, seconds of ``counts[s]`` runs of steps ``s..end`` on
    every batch for each step ``s``): the float forwards a stage needs, each one run (no extrapolation,
    so the load of a shared machine weighs on both sides of the ratio alike)."""
    cached, full = _timed(lambda: [chain.inputs(x)[0] for x in batches], device)
    partial = 0.0
    for s, n in sorted(counts.items()):
        partial += _timed(lambda s=s, n=n: [chain.run(c[s], s) for _ in range(n) for c in cached], device)[1]
    return full, partial


def _result(seconds: float, float_seconds: float, notes: str, **extra: Any) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "float_seconds": float_seconds,
        "ratio": seconds / float_seconds,
        "notes": notes,
        **extra,
    }


# ---- Evol-Q ------------------------------------------------------------------------------------------
@torch.no_grad()
def _evolq_pass(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    device = model_device(model)
    q = copy.deepcopy(model).eval()
    batch = min(64, len(images))
    batches = _batches(images, device, batch)
    quantize_(q, get_preset("w4a8"), batches)  # the starting point (PTQ is its own stage)
    config = EvolQConfig(passes=1, calib_size=len(images), batch_size=batch)
    result, seconds = _timed(lambda: evolq_(q, batches, config), device)
    with _float(q):
        chain = model_chain(q, "logits", distilled=True)
        blocks = [chain.names.index(name) for name in result.blocks]
        _, fp = _timed(lambda: [q(x) for x in batches], device)  # the float logits
        float_seconds = fp + sum(_float_forwards(chain, batches, dict.fromkeys(blocks, config.cycles), device))
    notes = (
        f"one pass, {len(blocks)} blocks x {config.cycles} children, {len(images)} images in batches of {batch}, "
        f"w4a8 PTQ start; float = float logits + one pass keeping block inputs + the children's block-to-logits "
        f"forwards on the float model"
    )
    return _result(seconds, float_seconds, notes, images=len(images), evaluations=result.evaluations)


def evolq_one_pass(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    """One Evol-Q pass (the paper's C=3 children per block, population 15) on ``images``."""
    return _evolq_pass(model, images, quick)


def evolq_projected_default(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    """The default run (10 passes, 1,000 images) projected from one measured pass: every pass costs the
    same and the forwards scale with the images (the setup, one float pass, is counted 10 times: an
    upper bound by at most 1/20 of the run)."""
    one = _evolq_pass(model, images, quick)
    scale = EVOLQ_DEFAULT.passes * EVOLQ_DEFAULT.calib_size / len(images)
    one["notes"] = (
        f"projected: one measured pass x {EVOLQ_DEFAULT.passes} passes x 1000/{len(images)} images; " + (one["notes"])
    )
    one.update(
        measured_seconds=one["seconds"], seconds=one["seconds"] * scale, float_seconds=one["float_seconds"] * scale
    )
    return one


# ---- F-LBQ curves ------------------------------------------------------------------------------------
def _kept_layers(model: nn.Module, chain: Chain, unit: str, quick: bool) -> list[str]:
    """All backbone layers; ``quick``: the layers of the middle block (layer units) or its attention
    projection (group units), enough to see the overhead per partial forward."""
    layers = backbone_layers(model)
    if not quick:
        return layers
    middle = chain.names[chain.block_steps()[len(chain.block_steps()) // 2]]
    kept = [n for n in layers if n.startswith(middle + ".")]
    return [n for n in kept if n.endswith("attn.proj")] if unit != "layer" else kept


@torch.no_grad()
def flbq_curves(model: nn.Module, images: torch.Tensor, quick: bool, unit: str = "layer") -> dict[str, Any]:
    """F-LBQ distortion curves (7 bit widths) of ``unit`` ``layer`` or ``group`` (G = 32 channels) on
    ``images``; ``quick`` measures a part of the units and projects the default run (every unit,
    64 images) from the ratio."""
    unit = GROUP if unit == "group" else unit
    device = model_device(model)
    m = copy.deepcopy(model).eval()
    batch = min(64, len(images))
    batches = _batches(images, device, batch)
    chain = model_chain(m, "pre_logits")
    kept = _kept_layers(m, chain, unit, quick)
    exclude = tuple(n for n in backbone_layers(m) if n not in kept)
    info: dict[str, Any] = {}
    x = torch.cat(batches)
    _, seconds = _timed(
        lambda: measure_curves(
            m, [x], unit, DEFAULT_BITS, n_images=len(x), batch_size=batch, exclude=exclude, info=info
        ),
        device,
    )
    everything = weight_units(m, unit, backbone_layers(m))
    bits = len(DEFAULT_BITS)
    measured = [u for u in everything if u.layer in kept]
    counts: dict[int, int] = {}
    for u in measured:
        step = chain.step_of(u.layer)
        counts[step] = counts.get(step, 0) + bits
    full, partial = _float_forwards(chain, batches, counts, device)
    float_seconds = full + partial
    ratio = seconds / float_seconds
    # the default run's float forwards, from the measured ones: a partial forward from step s costs the
    # blocks s..end (timm blocks of one model cost the same; the stem and head are in the one full pass)
    blocks = chain.block_steps()
    depth = {s: sum(1 for b in blocks if b >= s) for s in range(len(chain.names))}
    work = sum(depth[chain.step_of(u.layer)] for u in measured) or 1
    float_default = full + partial * sum(depth[chain.step_of(u.layer)] for u in everything) / work
    float_default *= FLBQ_DEFAULT_IMAGES / len(x)
    notes = (
        f"{unit}: {len(measured)} of {len(everything)} units x {bits} bit widths, {len(x)} images; float = one "
        f"pass keeping every step's input + each measurement's partial forward (from the unit's block) on the "
        f"float model; projected = ratio x the float forwards of all units on {FLBQ_DEFAULT_IMAGES} images"
    )
    return _result(
        seconds,
        float_seconds,
        notes,
        unit=unit,
        units_measured=len(measured),
        units_total=len(everything),
        forwards=info.get("forwards"),
        projected_seconds=ratio * float_default,
    )


# ---- MixA-Q ------------------------------------------------------------------------------------------
@torch.no_grad()
def mixaq_candidates(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    """MixA-Q candidate evaluation on a Swin: top-1 and BOPs of 4 (quick) or 8 ratio vectors of the
    uniform-sum sampler, each a forward of the two-branch W8A8 / A4 model over ``images`` (random labels)
    and a BOPs probe, against a float forward over the same images per candidate.

    ``ratio`` counts the whole evaluation; ``forward_ratio`` the forwards alone. The BOPs probe (one
    image through the cost model's hooks) does not grow with the images: on the default 1,000 held-out
    images it is a small part, on a few images a large one (``bops_seconds``)."""
    from vitcompress.eval.classification import evaluate
    from vitcompress.methods.mixaq.bops import mixed_cost
    from vitcompress.methods.mixaq.model import mixaq_, model_groups, set_ratios
    from vitcompress.methods.mixaq.sampling import _grid
    from vitcompress.methods.mixaq.search import MixAQSearchConfig, initial_population

    device = model_device(model)
    q = copy.deepcopy(model).eval()
    batch = min(64, len(images))
    batches = _batches(images, device, batch)
    mixaq_(q, batches, get_preset("w8a8"), 4, batch_size=batch)  # PTQ + low-branch calibration: not timed
    labels = torch.randint(0, 2, (len(images),), generator=torch.Generator().manual_seed(0)).to(device)
    data = list(zip(batches, labels.split(batch), strict=True))
    config = MixAQSearchConfig(population=4 if quick else 8, seed=0)
    to_ratios = _grid(config.upper, config.step).to_ratios
    candidates = [to_ratios(row) for row in initial_population(len(model_groups(q)), config)]
    forwards = bops = 0.0
    for c in candidates:  # what model_evaluator does per new candidate, its two parts timed apart
        set_ratios(q, c, upper=1.0)
        forwards += _timed(lambda: evaluate(q, data), device)[1]
        bops += _timed(lambda: mixed_cost(q), device)[1]
    float_model = copy.deepcopy(model).eval()
    _, float_seconds = _timed(lambda: [float_model(x) for _ in candidates for x in batches], device)
    notes = (
        f"{len(candidates)} candidates (uniform-sum sampler), {len(images)} images each: top-1 forward + BOPs "
        f"probe; float = a float forward over the images per candidate"
    )
    return _result(
        forwards + bops,
        float_seconds,
        notes,
        forward_ratio=forwards / float_seconds,
        bops_seconds=bops,
        candidates=len(candidates),
        images=len(images),
    )


STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "evolq_one_pass": evolq_one_pass,
    "evolq_projected_default": evolq_projected_default,
    "flbq_curves_layer": lambda m, x, quick: flbq_curves(m, x, quick, unit="layer"),
    "flbq_curves_group": lambda m, x, quick: flbq_curves(m, x, quick, unit="group"),
    "mixaq_candidates": mixaq_candidates,
}


def main() -> None:
    import timm

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (random weights, 224 px)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the command line does: no fresh pages for every activation buffer
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(args.device)
    images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows = {}
    for name in args.stages:
        if name == "mixaq_candidates" and "swin" not in args.model:
            continue
        rows[name] = STAGES[name](model, images, args.quick)
        print(name, json.dumps(rows[name]), flush=True)
    out = {"model": args.model, "images": args.images, "quick": args.quick, "threads": torch.get_num_threads()}
    out.update(load=os.getloadavg(), stages=rows)
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
