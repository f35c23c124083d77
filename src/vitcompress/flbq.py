"""F-LBQ end to end (``vitcompress allocate --model``): curves, both solvers, apply, evaluate, report.

Like :mod:`vitcompress.pipeline`, this module sees every layer of the toolkit; the CLI and the
benchmark call it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vitcompress.calib import iter_images
from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.cost import cost
from vitcompress.data.datasets import calibration_subset, load_dataset
from vitcompress.errors import ConfigError
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json, write_text
from vitcompress.models.chain import model_chain
from vitcompress.models.registry import input_spec_of, load_model
from vitcompress.nn.convert import set_quantizers
from vitcompress.quantize import quantize_, save
from vitcompress.report.charts import bar_chart
from vitcompress.search.bitalloc.allocate import check_curves_match
from vitcompress.search.bitalloc.apply import plan_layers, plan_to_recipe
from vitcompress.search.bitalloc.curves import Curves
from vitcompress.search.bitalloc.measure import DEFAULT_BITS, measure_curves
from vitcompress.search.bitalloc.solvers import SOLVERS, BitPlan, min_bits_from_margin

log = logging.getLogger(__name__)
ACT_ROLES = ("act", "qkv", "probs", "norm")


@dataclass(frozen=True)
class AllocateJob:
    """What to allocate (the CLI's ``allocate --model`` arguments)."""

    model: str
    budget: float
    unit: str = "layer"
    solver: str = "dp"
    bits: tuple[int, ...] = DEFAULT_BITS
    min_bits: int | None = None
    margin: float | None = None
    n_images: int = 64
    calib_size: int = 1000
    act_bits: int = 8
    head_bits: int = 8
    target: str = "pre_logits"
    exclude: tuple[str, ...] = ()
    seed: int = 0
    data_root: str | None = None
    eval_limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.solver not in SOLVERS:
            raise ConfigError(f"solver must be one of {sorted(SOLVERS)}, got {self.solver!r}")
        if self.min_bits is not None and self.margin is not None:
            raise ConfigError("give min_bits or margin, not both")
        QuantSpec(self.act_bits)  # names the field on a bad value
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def curves_key(self) -> dict:
        """What the curves depend on (a cached curves file is reused only when this matches)."""
        return {"model": self.model, "unit": self.unit, "bits": list(self.bits), "n_images": self.n_images,
                "target": self.target, "exclude": list(self.exclude), "seed": self.seed, "data_root": self.data_root}


def base_recipe(act_bits: int) -> Recipe:
    """``w8a8`` with every activation point (linear inputs, q/k/v, probabilities, LN inputs) at ``act_bits``."""
    base = get_preset("w8a8")
    return replace(base, **{r: replace(getattr(base, r), bits=act_bits) for r in ACT_ROLES})


def _curves(job: AllocateJob, model, calib, out: Path | None) -> tuple[Curves, dict]:
    path, meta_path = (out / "curves.json", out / "curves.meta.json") if out else (None, None)
    if path and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == job.curves_key():
            curves = Curves.from_json(path)
            check_curves_match(curves, model, job.unit, job.exclude)
            log.info("reusing the distortion curves in %s", path)
            return curves, meta["info"]
    info: dict = {}
    curves = measure_curves(model, calib, job.unit, job.bits, job.target, job.n_images, exclude=job.exclude,
                            progress=job.progress, info=info)
    if path:
        curves.to_json(path)
        write_json(meta_path, {"key": job.curves_key(), "info": info})
    return curves, info


@torch.no_grad()
def weight_only_distortion(qmodel, fp_model, images: torch.Tensor, target: str = "pre_logits") -> float:
    """Feature MSE of ``qmodel`` with only its weight quantizers on, against ``fp_model``."""
    set_quantizers(qmodel, False, ACT_ROLES)
    try:
        got = model_chain(qmodel, target).run(images)
    finally:
        set_quantizers(qmodel, True, ACT_ROLES)
    ref = model_chain(fp_model, target).run(images)
    return float(((got - ref) ** 2).mean())


def layer_bits(plan: BitPlan, model) -> dict[str, float]:
    """Layer -> average bits of its units (weighted equally: groups have equal sizes)."""
    return {layer: sum(b) / len(b) for layer, b in plan_layers(plan, model).items()}


def run_allocate(job: AllocateJob, out_dir: str | Path | None = None) -> dict:
    """Measure curves (or reuse ``out_dir/curves.json``), solve with both solvers, quantize with
    ``job.solver``'s plan (activations at ``job.act_bits``), evaluate, and write the outputs.

    Writes ``curves.json``, ``plan.json`` (the chosen plan), ``plan_dp.json``/``plan_lg.json``,
    ``model/``, ``metrics.json``, ``report.md`` and ``bits_per_layer.png`` (DP and LG side by side).
    Returns the metrics dict.
    """
    t0 = time.perf_counter()
    out = Path(out_dir) if out_dir is not None else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    model = load_model(job.model)
    spec = input_spec_of(model)
    test = load_dataset(spec, "test", job.data_root)
    calib = calibration_subset(load_dataset(spec, "train", job.data_root), job.calib_size, seed=job.seed)
    curves, curve_info = _curves(job, model, calib, out)
    min_bits = min_bits_from_margin(job.budget, job.margin) if job.margin is not None else job.min_bits
    plans = {}
    for name, solve in SOLVERS.items():
        try:
            plans[name] = solve(curves, job.budget, min_bits=min_bits)
        except ConfigError as e:
            if name == job.solver or "outside the feasible range" in str(e):
                raise
            log.warning("%s plan skipped (chart shows %s only): %s", name, job.solver, e)
    plan = plans[job.solver]
    recipe = plan_to_recipe(plan, model, base_recipe(job.act_bits), job.head_bits)
    fp = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    fp_cost, float_model = cost(model), copy.deepcopy(model)
    t_q = time.perf_counter()
    quantize_(model, recipe, calib, progress=job.progress)
    ptq_seconds = time.perf_counter() - t_q
    images = next(iter(iter_images(calib, job.n_images)))[: job.n_images]
    measured = weight_only_distortion(model, float_model, images, job.target)
    q = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    q_cost = cost(model)
    metrics = {
        "job": asdict(job), "recipe": recipe.name, "units": len(curves), "avg_bits": plan.avg_bits,
        "predicted_distortion": plan.distortion, "measured_distortion": measured,
        "solver_seconds": {k: p.seconds for k, p in plans.items()},
        "plans": {k: {"avg_bits": p.avg_bits, "distortion": p.distortion} for k, p in plans.items()},
        "curve_seconds": curve_info.get("seconds"), "curve_monotone_fixes": curve_info.get("monotone_fixes"),
        "fp_top1": fp.top1, "q_top1": q.top1, "eval_images": q.images, "bops": q_cost.bops,
        "fp_bops": fp_cost.bops, "rel_bops": q_cost.rel_bops, "size_bytes": q_cost.size_bytes,
        "fp_size_bytes": fp_cost.size_bytes, "ptq_seconds": ptq_seconds,
        "layer_bits": {k: layer_bits(p, float_model) for k, p in plans.items()},
    }
    metrics["seconds"] = time.perf_counter() - t0
    if out:
        _write_outputs(out, model, recipe, plans, job, metrics)
    return metrics


def _write_outputs(out: Path, model, recipe: Recipe, plans: dict[str, BitPlan], job: AllocateJob,
                   metrics: dict) -> None:
    save(model, out / "model")
    for name, p in plans.items():
        write_json(out / f"plan_{name}.json", p.to_dict())
    write_json(out / "plan.json", plans[job.solver].to_dict())
    lb = metrics["layer_bits"]
    labels = list(lb[job.solver])
    bar_chart(out / "bits_per_layer.png", labels, {k.upper(): [lb[k][n] for n in labels] for k in lb},
              "average weight bits", f"{job.model}: F-LBQ bits per layer at {job.budget:g} bits ({job.unit})")
    write_json(out / "metrics.json", metrics)
    write_text(out / "report.md", allocation_report(metrics, labels))


def allocation_report(m: dict, labels: list[str]) -> str:
    """The markdown report of an allocation run."""
    job, lb = m["job"], m["layer_bits"]
    solvers = list(lb)
    lines = [
        f"# F-LBQ bit allocation: {job['model']}, budget {job['budget']:g} bits, unit `{job['unit']}`, "
        f"solver {job['solver'].upper()}",
        "",
        f"{m['units']} units; curves from {job['n_images']} calibration images ({m['curve_seconds'] or 0:.1f} s); "
        f"activations at {job['act_bits']} bit, classifier weights at {job['head_bits']} bit.",
        "",
        "| | value |",
        "|---|---:|",
        f"| achieved average weight bits (backbone) | {m['avg_bits']:.4f} |",
        f"| predicted feature distortion (Σ D_u) | {m['predicted_distortion']:.4g} |",
        f"| measured feature distortion (weights only) | {m['measured_distortion']:.4g} |",
        f"| top-1 FP32 → quantized (%) | {m['fp_top1']:.2f} → {m['q_top1']:.2f} "
        f"({m['q_top1'] - m['fp_top1']:+.2f}) on {m['eval_images']} images |",
        f"| BOPs (relative to FP32) | {m['bops']:,} ({m['rel_bops']:.4f}) |",
        f"| size (bytes) | {m['fp_size_bytes']:,} → {m['size_bytes']:,} |",
        "",
        "Solvers on the same curves: " + "; ".join(
            f"{k.upper()} {m['plans'][k]['avg_bits']:.4f} bits, predicted D {m['plans'][k]['distortion']:.4g}, "
            f"{m['solver_seconds'][k]:.3f} s" for k in solvers),
        "",
        "| layer | " + " | ".join(f"{k.upper()} bits" for k in solvers) + " |",
        "|---|" + "---:|" * len(solvers),
    ]
    lines += [f"| `{n}` | " + " | ".join(f"{lb[k].get(n, float('nan')):.2f}" for k in solvers) + " |"
              for n in labels]
    lines += ["", "![bits per layer](bits_per_layer.png)", ""]
    return "\n".join(lines)
