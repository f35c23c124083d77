"""F-LBQ benchmark (issue #5): mixed weight bits (DP and LG, per layer and per channel group) vs uniform bits.

For each model: measure the distortion curves once per unit kind, solve at each budget with both
solvers, quantize (weights as planned, MSE scales; every activation point at 8 bit; classifier 8 bit),
evaluate top-1 on the test set, and compare with uniform weight bits at the same average, quantized
the same way. Uniform cannot express 2.5 bits: the baselines there are the two depth-ordered mixes
of 2- and 3-bit layers (earliest layers at 3 bits, or latest layers at 3 bits, as many as the budget
allows) and the better of the two is "best uniform mix". Also times the solvers on 10,000 synthetic
units x 7 bit widths. Writes docs/results/bitalloc.json and bitalloc_<model>.png (bits per layer).

Run:  .venv/bin/python benchmarks/bitalloc.py [--models vit-fmnist swin-fmnist] [--budgets 2.5 3 4]
          [--limit N] [--threads 1];  --render rewrites bitalloc.md from bitalloc.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vitcompress.cost import cost
from vitcompress.data.calib import first_images
from vitcompress.data.datasets import calibration_subset, load_dataset
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json, write_text
from vitcompress.methods.flbq import (
    SOLVERS,
    BitPlan,
    Curves,
    UnitCurve,
    base_recipe,
    lagrangian_allocate,
    layer_bits,
    measure_curves,
    plan_to_recipe,
    solve,
    weight_only_distortion,
)
from vitcompress.methods.flbq.units import backbone_layers, weight_units
from vitcompress.models.registry import input_spec_of, load_model
from vitcompress.quantize import quantize_
from vitcompress.report.charts import bar_chart

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {"vit-fmnist": 32, "swin-fmnist": 24}  # common divisors of every backbone layer's output channels
log = logging.getLogger("bitalloc")


def uniform_plan(model, layers: list[str], bits: list[int], budget: float, name: str) -> BitPlan:
    units = weight_units(model, "layer", layers)
    avg = sum(b * u.size for b, u in zip(bits, units)) / sum(u.size for u in units)
    return BitPlan({u.name: b for u, b in zip(units, bits)}, avg, float("nan"), "dp", budget, 0.0)


def depth_mix(model, layers: list[str], budget: float, early: bool) -> list[int]:
    """2/3-bit layers: 3 bits to layers in depth order (or reverse) while the average stays <= budget."""
    units = weight_units(model, "layer", layers)
    total, cap = sum(u.size for u in units), budget * sum(u.size for u in units)
    bits, used = [2] * len(units), 2 * total
    order = range(len(units)) if early else range(len(units) - 1, -1, -1)
    for i in order:
        if used + units[i].size <= cap:
            bits[i], used = 3, used + units[i].size
    return bits


def run_plan(model, plan: BitPlan, calib, test, images, limit) -> dict:
    q = copy.deepcopy(model)
    quantize_(q, plan_to_recipe(plan, model, base_recipe(8)), calib)
    m = evaluate(q, test, limit=limit)
    c = cost(q)
    measured = weight_only_distortion(q, model, images)
    return {
        "avg_bits": plan.avg_bits,
        "predicted": plan.distortion,
        "measured": measured,
        "top1": m.top1,
        "rel_bops": c.rel_bops,
        "size_bytes": c.size_bytes,
    }


def bench_model(name: str, budgets: list[float], limit: int | None, out: Path) -> dict:
    model = load_model(name).eval()
    spec = input_spec_of(model)
    test = load_dataset(spec, "test")
    calib = calibration_subset(load_dataset(spec, "train"), 1000, seed=0)
    images = first_images(calib, 64)
    fp = evaluate(model, test, limit=limit)
    layers = backbone_layers(model)
    res: dict = {"model": name, "fp_top1": fp.top1, "eval_images": fp.images, "curves": {}, "rows": []}
    curves: dict[str, Curves] = {}
    for unit in ("layer", f"group:{GROUPS[name]}"):
        info: dict = {}
        curves[unit] = measure_curves(model, [images], unit, n_images=64, info=info)
        res["curves"][unit] = info
        log.info("%s %s curves: %s", name, unit, info)
    for budget in budgets:
        for unit, cv in curves.items():
            for solver in SOLVERS:
                plan = solve(cv, budget, solver)
                row = {
                    "budget": budget,
                    "method": f"F-LBQ-{solver.upper()}",
                    "unit": unit,
                    "units": len(cv),
                    "solver_seconds": plan.seconds,
                    **run_plan(model, plan, calib, test, images, limit),
                }
                row["layer_bits"] = layer_bits(plan, model)
                res["rows"].append(row)
                log.info("%s", {k: v for k, v in row.items() if k != "layer_bits"})
        if float(budget).is_integer():
            baselines = {f"uniform {int(budget)}-bit": [int(budget)] * len(layers)}
        else:
            baselines = {
                "2/3 mix, early layers 3-bit": depth_mix(model, layers, budget, True),
                "2/3 mix, late layers 3-bit": depth_mix(model, layers, budget, False),
            }
        for label, bits in baselines.items():
            plan = uniform_plan(model, layers, bits, budget, label)
            row = {
                "budget": budget,
                "method": label,
                "unit": "layer",
                "units": len(layers),
                **run_plan(model, plan, calib, test, images, limit),
            }
            res["rows"].append(row)
            log.info("%s", row)
    for unit in curves:  # the F-LBQ paper's DP vs LG figure: bits per layer for both solvers at 3 bits
        rows = [r for r in res["rows"] if r["budget"] == 3 and r["unit"] == unit and "layer_bits" in r]
        if rows:
            labels = list(rows[0]["layer_bits"])
            bar_chart(
                out / f"bitalloc_{name}_{unit.replace(':', '')}.png",
                labels,
                {r["method"]: [r["layer_bits"][n] for n in labels] for r in rows},
                "average weight bits",
                f"{name}: F-LBQ bits per layer at 3 bits ({unit} units)",
            )
    return res


def lg_speed() -> dict:
    rng = np.random.default_rng(0)
    a, n, bits = np.exp(rng.uniform(-5, 5, 10_000)), rng.integers(500, 1001, 10_000), range(2, 9)
    cv = Curves(
        tuple(
            UnitCurve(f"u{i}", int(n[i]), tuple(bits), tuple(float(a[i]) * 4.0**-b for b in bits))
            for i in range(10_000)
        )
    )
    lg = min((lagrangian_allocate(cv, 3.5) for _ in range(5)), key=lambda p: p.seconds)
    return {
        "units": 10_000,
        "bit_choices": 7,
        "sizes": "random 500..1000",
        "lg_seconds_best_of_5": lg.seconds,
        "lg_avg_bits": lg.avg_bits,
        "lg_within_eps": lg.within_eps,
    }


def render(result: dict) -> str:
    """docs/results/bitalloc.md: one table per model."""
    sp = result["lg_speed"]
    lines = [
        "# F-LBQ results",
        "",
        f"Command: `{result['command']}` ({result['environment']}).",
        "",
        f"LG on {sp['units']:,} synthetic units x {sp['bit_choices']} bit widths ({sp['sizes']} weights): "
        f"{sp['lg_seconds_best_of_5']:.3f} s (best of 5), {sp['lg_avg_bits']:.3f} bits at budget 3.5.",
        "",
    ]
    for m in result["models"]:
        curves = "; ".join(
            f"`{u}`: {i['units']} units, {i['forwards']} forwards, {i['seconds']:.0f} s" for u, i in m["curves"].items()
        )
        lines += [
            f"## {m['model']} (FP32 top-1 {m['fp_top1']:.2f} % on {m['eval_images']} test images)",
            "",
            f"Curves (64 images, bits 2..8): {curves}.",
            "",
            "| budget | method | unit | avg bits | predicted D | measured D | top-1 (%) | drop (pt) | rel. BOPs "
            "| size (KiB) | solver s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in m["rows"]:
            pred = "" if r["predicted"] != r["predicted"] else f"{r['predicted']:.4g}"
            solver = f"{r['solver_seconds']:.4f}" if "solver_seconds" in r else ""
            lines.append(
                f"| {r['budget']:g} | {r['method']} | `{r['unit']}` | {r['avg_bits']:.3f} | {pred} | "
                f"{r['measured']:.4g} | {r['top1']:.2f} | {m['fp_top1'] - r['top1']:.2f} | "
                f"{r['rel_bops']:.4f} | {r['size_bytes'] / 1024:.1f} | {solver} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=list(GROUPS))
    p.add_argument("--budgets", nargs="+", type=float, default=[2.5, 3.0, 4.0])
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    p.add_argument("--render", action="store_true", help="only rewrite bitalloc.md from --out/bitalloc.json")
    args = p.parse_args()
    out = Path(args.out)
    if args.render:
        write_text(out / "bitalloc.md", render(json.loads((out / "bitalloc.json").read_text())))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    given = {
        k: " ".join(map(str, v)) if isinstance(v, list) else v
        for k, v in vars(args).items()
        if v not in (None, False) and k != "out"
    }
    result = {
        "command": "python benchmarks/bitalloc.py " + " ".join(f"--{k} {v}" for k, v in given.items()),
        "environment": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "lg_speed": lg_speed(),
        "models": [],
    }
    log.info("solver speed: %s", result["lg_speed"])
    for name in args.models:
        result["models"].append(bench_model(name, args.budgets, args.limit, out))
        result["seconds"] = time.perf_counter() - t0
        write_json(out / "bitalloc.json", result)  # after each model: a killed run keeps what it finished
        write_text(out / "bitalloc.md", render(result))


if __name__ == "__main__":
    main()
