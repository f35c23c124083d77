"""F-LBQ as a method of :func:`vitcompress.compress_`: curves, both solvers, plan -> recipe, PTQ, report.

``state_dir`` keeps the curves (``curves.json`` + ``curves.meta.json``); a later run whose curve
settings, model weights and calibration images are the same reuses them instead of measuring again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress import distributed
from vitcompress.config import load_json_file
from vitcompress.data.calib import first_images
from vitcompress.device import model_device
from vitcompress.errors import ConfigError, StateError
from vitcompress.io import write_json
from vitcompress.methods.flbq.allocate import allocate_bits, check_curves_match, config_curves
from vitcompress.methods.flbq.apply import base_recipe, layer_bits, plan_to_recipe
from vitcompress.methods.flbq.config import FLBQConfig
from vitcompress.methods.flbq.curves import Curves
from vitcompress.methods.flbq.measure import weight_only_distortion
from vitcompress.methods.flbq.solvers import SOLVERS, BitPlan
from vitcompress.methods.registry import register
from vitcompress.quantize import quantize_
from vitcompress.report.charts import bar_chart
from vitcompress.result import Result

log = logging.getLogger(__name__)
CURVES_FILE, CURVES_META = "curves.json", "curves.meta.json"


@register(FLBQConfig, "flbq", calib_size=1000)
def flbq(
    model: nn.Module,
    config: FLBQConfig,
    calib,
    *,
    train_data=None,
    eval_data=None,
    state_dir: Path | None = None,
    resume: bool = False,
) -> Result:
    """Allocate weight bits with F-LBQ and quantize ``model`` in place with the plan of ``config.solver``.

    Measures the distortion curves on the first ``config.n_images`` of ``calib`` (or reuses
    ``state_dir/curves.json``, whatever ``resume`` says, when they were measured with the same settings,
    weights and images), solves with both solvers (the other one for the report and the chart), and
    quantizes: weights as planned with least-MSE scales, activations at ``config.act_bits`` calibrated
    on ``calib``, classifier weights at ``config.head_bits``.

    Returns:
        A :class:`~vitcompress.result.Result` whose ``plan`` is the chosen :class:`BitPlan`; its files are
        ``plan.json``, ``plan_dp.json``, ``plan_lg.json`` and ``bits_per_layer.png`` (DP and LG per layer).

    Raises:
        ConfigError: no ``calib``, curves that do not fit the model, or a budget outside the feasible range.
        StateError: the model is quantized already (curves are measured on the float model).
    """
    if calib is None:
        raise ConfigError("F-LBQ needs calibration images (the curves and the activation ranges are measured on them)")
    curves, info, reused = cached_curves(model, calib, config, state_dir)
    plans = solve_both(model, config, curves)
    plan = plans[config.solver]
    bits = {k: layer_bits(p, model) for k, p in plans.items()}
    base = config.base if config.base is not None else base_recipe(config.act_bits)
    recipe = plan_to_recipe(plan, model, base, config.head_bits)
    float_model = copy.deepcopy(model)
    t0 = time.perf_counter()
    quantize_(model, recipe, calib, state_dir=state_dir, resume=resume)  # (a base with reconstruction resumes)
    ptq_seconds = time.perf_counter() - t0
    images = first_images(calib, config.n_images, device=model_device(model))
    measured = weight_only_distortion(model, float_model, images, config.target)
    metrics = {
        "config": asdict(config),
        "units": len(curves),
        "avg_bits": plan.avg_bits,
        "predicted_distortion": plan.distortion,
        "measured_distortion": measured,
        "solver_seconds": {k: p.seconds for k, p in plans.items()},
        "plans": {k: {"avg_bits": p.avg_bits, "distortion": p.distortion} for k, p in plans.items()},
        "curve_seconds": info.get("seconds"),
        "curve_monotone_fixes": info.get("monotone_fixes"),
        "curves_reused": reused,
        "ptq_seconds": ptq_seconds,
        "layer_bits": bits,
    }
    title = f"{model_name(model)}: F-LBQ bits per layer at {config.budget:g} bits ({config.unit})"
    files: dict[str, Any] = {f"plan_{k}.json": p.to_dict() for k, p in plans.items()}
    files["plan.json"] = plan.to_dict()
    files["bits_per_layer.png"] = lambda path: bits_chart(path, bits, config.solver, title)
    return Result(model, "flbq", config, metrics, plan=plan, files=files, report=flbq_report(config, metrics))


def model_name(model: nn.Module) -> str:
    """The zoo/timm name the model was loaded by, else its class name."""
    return getattr(model, "vitcompress_source", {}).get("name") or type(model).__name__


def solve_both(model: nn.Module, config: FLBQConfig, curves: Curves) -> dict[str, BitPlan]:
    """Solver name -> plan on the same curves; the other solver's plan is skipped (logged) where only
    it fails (e.g. DP's table too large), never where the budget is infeasible."""
    plans = {}
    for name in SOLVERS:
        try:
            plans[name] = allocate_bits(model, None, config, curves=curves, solver=name)
        except ConfigError as e:
            if name == config.solver or "outside the feasible range" in str(e):
                raise
            log.warning("%s plan skipped (chart shows %s only): %s", name, config.solver, e)
    return plans


def curves_key(model: nn.Module, calib, config: FLBQConfig) -> dict[str, Any]:
    """What the curves depend on: the curve settings and fingerprints of the weights and the images."""
    weights = hashlib.sha256()
    for name, t in model.state_dict().items():
        weights.update(name.encode())
        weights.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    images = first_images(calib, config.n_images).contiguous().numpy().tobytes()
    return {
        "model": model_name(model),
        "unit": config.unit,
        "bits": list(config.bits),
        "n_images": config.n_images,
        "target": config.target,
        "exclude": list(config.exclude),
        "weights": weights.hexdigest(),
        "images": hashlib.sha256(images).hexdigest(),
    }


def cached_curves(
    model: nn.Module, calib, config: FLBQConfig, state_dir: Path | None
) -> tuple[Curves, dict[str, Any], bool]:
    """(curves, measurement info, whether they were reused from ``state_dir``)."""
    if state_dir is None:
        info: dict[str, Any] = {}
        return config_curves(model, calib, config, info), info, False
    path, meta_path = Path(state_dir) / CURVES_FILE, Path(state_dir) / CURVES_META
    with torch.no_grad():
        key = curves_key(model, calib, config)

    def reuse() -> tuple[Curves, dict[str, Any], bool] | None:
        if not (path.is_file() and meta_path.is_file()):
            return None
        try:
            meta = load_json_file(meta_path, "F-LBQ curves record", StateError)
        except StateError as e:  # a cache that cannot be read is measured again, like one that does not match
            log.warning("%s; measuring the curves again", e)
            return None
        if isinstance(meta, dict) and meta.get("key") == key and isinstance(meta.get("info"), dict):
            curves = Curves.from_json(path)
            check_curves_match(curves, model, config.unit, config.exclude)
            log.info("reusing the distortion curves in %s", path)
            return curves, meta["info"], True
        return None

    cached = distributed.main_decides(reuse)  # under torchrun rank 0 reads, every rank takes its answer
    if cached is not None:
        return cached
    info = {}
    curves = config_curves(model, calib, config, info)  # data-parallel across torchrun ranks inside
    if distributed.is_main():
        curves.to_json(path)
        write_json(meta_path, {"key": key, "info": info})
    return curves, info, False


def bits_chart(path: Path, bits: dict[str, dict[str, float]], solver: str, title: str) -> None:
    """Bits per layer, one bar per solver (the F-LBQ paper's DP vs LG figure)."""
    labels = list(bits[solver])
    bar_chart(path, labels, {k.upper(): [bits[k][n] for n in labels] for k in bits}, "average weight bits", title)


def flbq_report(config: FLBQConfig, m: dict[str, Any]) -> str:
    """The F-LBQ section of ``report.md`` (accuracy and cost are in the common part above it)."""
    lb = m["layer_bits"]
    solvers = list(lb)
    source = "reused from curves.json" if m["curves_reused"] else f"{m['curve_seconds'] or 0:.1f} s"
    lines = [
        "",
        f"## F-LBQ bit allocation: budget {config.budget:g} bits, unit `{config.unit}`, solver {config.solver.upper()}",
        "",
        f"{m['units']} units; curves from {config.n_images} calibration images ({source}); activations at "
        f"{config.act_bits} bit, classifier weights at {config.head_bits} bit.",
        "",
        "| | value |",
        "|---|---:|",
        f"| achieved average weight bits (backbone) | {m['avg_bits']:.4f} |",
        f"| predicted feature distortion (Σ D_u) | {m['predicted_distortion']:.4g} |",
        f"| measured feature distortion (weights only) | {m['measured_distortion']:.4g} |",
        "",
        "Solvers on the same curves: "
        + "; ".join(
            f"{k.upper()} {m['plans'][k]['avg_bits']:.4f} bits, predicted D {m['plans'][k]['distortion']:.4g}, "
            f"{m['solver_seconds'][k]:.3f} s"
            for k in solvers
        ),
        "",
        "| layer | " + " | ".join(f"{k.upper()} bits" for k in solvers) + " |",
        "|---|" + "---:|" * len(solvers),
    ]
    lines += [
        f"| `{n}` | " + " | ".join(f"{lb[k].get(n, float('nan')):.2f}" for k in solvers) + " |"
        for n in lb[config.solver]
    ]
    return "\n".join(lines + [""])
