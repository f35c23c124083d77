"""MixA-Q benchmark on swin-fmnist (docs/mixaq.md). One experiment per process writes
``runs/mixaq/<experiment>.json`` after every row; ``merge`` combines them into ``docs/results/mixaq.json``
and draws the charts.

  python benchmarks/mixaq.py curve  --config a8a4      # training-free: top-1 vs BOPs over uniform ratios
  python benchmarks/mixaq.py curve  --config w4a4a2    # W4, high A4 / low A2
  python benchmarks/mixaq.py prune                     # pruning only (SparseViT) on the W8A8 model
  python benchmarks/mixaq.py search --init uniform-sum # NSGA-II, 2 generations, population 8
  python benchmarks/mixaq.py search --init naive
  python benchmarks/mixaq.py saqa   --config w4a4a2 --steps 150   # SAQA from the LSQ training-free model
  python benchmarks/mixaq.py point  --ratios 0 0 0 0 0 0 --ratios 0 .2 .5 .7 .5 .2 --test-limit 10000
  python benchmarks/mixaq.py merge

Every run: 1 torch thread, calibration = 256 train images (seeded permutation, seed 0), the search scores
on the next 1,000 train images of that permutation (disjoint, held out); test top-1 on the first
``--test-limit`` test images (default 5,000). Relative BOPs are against the same model at ratio 0
(uniform high precision: W8A8 for a8a4, W4A4 for w4a4a2). ``TQDM_DISABLE=1`` keeps progress bars out of the
logs. ``vitcompress compress mixaq`` runs the same search on the same split (same numbers; see docs/mixaq.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vitcompress.config import get_preset
from vitcompress.data import calibration_subset, load_dataset
from vitcompress.eval import evaluate
from vitcompress.io import write_json
from vitcompress.methods.mixaq import act_bits_eq, mixaq_, mixed_cost, model_groups, set_ratios
from vitcompress.methods.mixaq.saqa import SAQAConfig, saqa_
from vitcompress.methods.mixaq.search import MixAQSearchConfig, pareto_chart, search_ratios
from vitcompress.methods.mixaq.step import cached_batches, held_out_subset, model_evaluator
from vitcompress.models import input_spec_of, load_model
from vitcompress.train.qat import qat_recipe

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "mixaq"
RESULTS = ROOT / "docs" / "results"
log = logging.getLogger("mixaq-bench")
RATIOS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)  # 1.0: every window low (the uniform-low reference)


# high recipe (min-max presets: every activation quantized, patch embedding and head at 8 bit), low bits
CONFIGS = {"a8a4": ("w8a8", 4), "w4a4a2": ("w4a4", 2)}


def build(args, config: str, learnable: bool = False):
    model = load_model("swin-fmnist")
    spec = input_spec_of(model)
    train = load_dataset(spec, "train")
    calib = calibration_subset(train, args.calib, seed=0)  # what a job draws (`--calib-size`, `--seed 0`)
    heldout = held_out_subset(calib, args.eval_images, seed=0)  # the next images of the same permutation
    recipe, low = CONFIGS[config]
    recipe = qat_recipe(get_preset(recipe)) if learnable else get_preset(recipe)
    t0 = time.process_time()
    mixaq_(model, calib, recipe, low)
    log.info("mixaq_ %s: %.1f CPU s", config, time.process_time() - t0)
    test = load_dataset(spec, "test")
    return model, heldout, test


def row(model, test, limit, ratios, prune=None) -> dict:
    n = len(model_groups(model))
    set_ratios(model, ratios, prune, upper=1.0)
    report = mixed_cost(model)
    base = mixed_cost(model, [0.0] * n, [0.0] * n)
    m = evaluate(model, test, limit=limit)
    return {
        "ratios": list(ratios),
        "prune": list(prune) if prune else None,
        "top1": m.top1,
        "bops": report.bops,
        "rel_bops": report.bops / base.bops,
        "rel_bops_fp32": report.rel_bops,
        "act_bits_eq": act_bits_eq(report),
        "macs": report.macs,
        "images": m.images,
    }


def save(name: str, data: dict) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    write_json(RUNS / f"{name}.json", data)


def meta(args) -> dict:
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "calib": args.calib,
        "eval_images": args.eval_images,
        "test_limit": args.test_limit,
    }


def run_curve(args) -> None:
    model, _, test = build(args, args.config)
    n = len(model_groups(model))
    out = {"meta": meta(args), "config": args.config, "rows": []}
    for r in RATIOS:
        t0 = time.process_time()
        out["rows"].append(row(model, test, args.test_limit, [r] * n))
        log.info("%s r=%.1f: %s (%.0f CPU s)", args.config, r, out["rows"][-1], time.process_time() - t0)
        save(f"curve_{args.config}", out)


def run_saqa(args) -> None:
    """Training-free (LSQ scales initialised by PTQ) vs SAQA-fine-tuned, at the uniform ratios."""
    model, _, test = build(args, args.config, learnable=True)
    n = len(model_groups(model))
    name = f"saqa_{args.config}_{args.init}_{args.steps}"
    out = {
        "meta": meta(args),
        "config": args.config,
        "sampler": args.init,
        "steps": args.steps,
        "before": [],
        "after": [],
    }
    ratios = (0.0, 0.4, 0.8)
    for r in ratios:
        out["before"].append(row(model, test, args.test_limit, [r] * n))
        save(name, out)
    teacher = load_model("swin-fmnist")
    train_data = load_dataset(input_spec_of(model), "train")
    config = SAQAConfig(steps=args.steps, batch_size=32, lr=args.lr, sampler=args.init, seed=0)
    t0 = time.process_time()
    summary = saqa_(model, train_data, config, teacher=teacher, state_dir=RUNS / name, resume=True)
    out["train"] = {
        "cpu_s": time.process_time() - t0,
        "seconds": summary["seconds"],
        "lr": args.lr,
        "history": summary["history"],
    }
    for r in ratios:
        out["after"].append(row(model, test, args.test_limit, [r] * n))
        log.info(
            "saqa r=%.1f: before %.2f after %.2f",
            r,
            out["before"][len(out["after"]) - 1]["top1"],
            out["after"][-1]["top1"],
        )
        save(name, out)


def run_point(args) -> None:
    """Given ratio vectors on (by default) the whole test set."""
    model, _, test = build(args, args.config)
    name = f"points_{args.config}_{args.test_limit}"
    out = {"meta": meta(args), "config": args.config, "rows": []}
    for ratios in args.ratios:
        out["rows"].append(row(model, test, args.test_limit, ratios))
        log.info("point %s: top-1 %.2f rel BOPs %.4f", ratios, out["rows"][-1]["top1"], out["rows"][-1]["rel_bops"])
        save(name, out)


def run_prune(args) -> None:
    model, _, test = build(args, "a8a4")
    n = len(model_groups(model))
    out = {"meta": meta(args), "config": "a8a4", "rows": []}
    for p in (0.1, 0.2, 0.3, 0.4):
        out["rows"].append(row(model, test, args.test_limit, [0.0] * n, [p] * n))
        log.info("prune %.1f: %s", p, out["rows"][-1])
        save("prune", out)


def run_search(args) -> None:
    model, heldout, test = build(args, args.config)
    n = len(model_groups(model))
    config = MixAQSearchConfig(population=args.population, generations=args.generations, init=args.init, seed=0)
    name = f"search_{args.config}_{args.init}"
    t0, w0 = time.process_time(), time.perf_counter()
    result = search_ratios(
        model_evaluator(model, cached_batches(heldout)),
        n,
        config,
        out=RUNS / name,
        resume=True,
        tag=f"bench {args.config} {args.calib} {args.eval_images}",
    )
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    out = {
        "meta": meta(args),
        "config": args.config,
        "search": dataclasses.asdict(config),
        "cpu_s": cpu,
        "wall_s": wall,
        "baseline": result.baseline,
        "front": result.front,
        "evaluated": result.evaluated,
        "chosen": result.chosen,
        "test": [],
    }
    save(name, out)
    for point in [result.baseline, *result.front]:
        out["test"].append(row(model, test, args.test_limit, point["ratios"]) | {"heldout_top1": point["top1"]})
        save(name, out)


def merge(args) -> None:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))}
    curves = {}
    if "curve_a8a4" in runs:
        curves["W8 A8/A4, uniform ratios"] = [(r["rel_bops"], r["top1"]) for r in runs["curve_a8a4"]["rows"]]
    if "prune" in runs:
        start = [(1.0, runs["curve_a8a4"]["rows"][0]["top1"])] if "curve_a8a4" in runs else []
        curves["W8A8 + pruning (SparseViT)"] = start + [(r["rel_bops"], r["top1"]) for r in runs["prune"]["rows"]]
    if curves:
        pareto_chart(RESULTS / "mixaq_tradeoff.png", {}, None, curves, title="swin-fmnist, training-free (test top-1)")
    if "curve_w4a4a2" in runs:
        pareto_chart(
            RESULTS / "mixaq_w4.png",
            {},
            None,
            {"W4 A4/A2 uniform ratios": [(r["rel_bops"], r["top1"]) for r in runs["curve_w4a4a2"]["rows"]]},
            title="swin-fmnist W4, high A4 / low A2 (test top-1)",
        )
    series = {
        k.removeprefix("search_a8a4_") + " init": v["evaluated"]
        for k, v in runs.items()
        if k.startswith("search_a8a4_")
    }
    if series:
        base = next(v["baseline"] for k, v in runs.items() if k.startswith("search_a8a4_"))
        pareto_chart(RESULTS / "mixaq_search.png", series, base, title="NSGA-II, 2 generations (held-out top-1)")
    for k, v in runs.items():
        if k.startswith("search_"):
            v["summary"] = search_summary(v)
            print(k, v["summary"])
    write_json(RESULTS / "mixaq.json", runs)
    print(
        json.dumps(
            {
                k: [
                    (r.get("ratios"), r.get("prune"), r["top1"], round(r["rel_bops"], 4))
                    for r in v.get("rows", v.get("test", []))
                ]
                for k, v in runs.items()
            },
            indent=1,
        )
    )


def search_summary(run: dict) -> dict:
    """Hypervolume of the held-out front (objectives: top-1 loss vs the ratio-0 point + 2 pt, relative
    BOPs up to 1) and the best held-out top-1 within 1/1.3 and 0.6 relative BOPs."""
    from pymoo.indicators.hv import HV

    base = run["baseline"]["top1"]
    f = np.array([[base - p["top1"], p["rel_bops"]] for p in run["evaluated"]])
    hv = float(HV(ref_point=np.array([2.0, 1.0]))(f)) if len(f) else 0.0
    best = {}
    for budget in (1 / 1.3, 0.6):
        inside = [p["top1"] for p in run["evaluated"] if p["rel_bops"] <= budget]
        best[f"{budget:.3f}"] = max(inside) if inside else None
    return {
        "hypervolume": hv,
        "best_heldout_top1_within": best,
        "baseline_heldout_top1": base,
        "evaluated": len(run["evaluated"]),
        "cpu_s": run.get("cpu_s"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", choices=["curve", "prune", "search", "saqa", "point", "merge"])
    p.add_argument("--config", choices=sorted(CONFIGS), default="a8a4")
    p.add_argument("--init", choices=["uniform-sum", "naive"], default="uniform-sum")
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--test-limit", type=int, default=5000)
    p.add_argument("--ratios", type=float, nargs="+", action="append", default=[], help="point: a ratio vector")
    p.add_argument("--steps", type=int, default=150, help="SAQA steps (batch 32)")
    p.add_argument("--lr", type=float, default=1e-4, help="SAQA peak learning rate")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    runs = {
        "curve": run_curve,
        "prune": run_prune,
        "search": run_search,
        "saqa": run_saqa,
        "point": run_point,
        "merge": merge,
    }
    runs[args.experiment](args)


if __name__ == "__main__":
    main()
