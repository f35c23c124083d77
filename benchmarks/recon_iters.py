"""Block reconstruction: top-1 against the iterations per block (the curve behind the default), over seeds.

For each model, the float model and the data are loaded once; each row quantizes a fresh copy with
``--preset`` plus ``Reconstruction(iters=N, seed=S)`` on the same 1,000 calibration images (the job's seeded
subset, seed 0) and evaluates it on the test set. Rows are appended to ``--out`` (JSON) as they finish, and
rows already there are skipped, so a killed run continues where it stopped. ``--iters 0`` is the preset
without reconstruction.

Run:  nice -n 10 .venv/bin/python benchmarks/recon_iters.py --models vit-fmnist --iters 0 50 100 200 400 \\
          --seeds 0 1 2 [--limit N] [--threads 1] [--out docs/results/recon_iters.json]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Subset

from vitcompress.config import Reconstruction, resolve_recipe
from vitcompress.data.datasets import calibration_subset
from vitcompress.data.source import DataSource
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json, write_text
from vitcompress.models.source import ModelSource
from vitcompress.quantize import quantize_

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"rows": []}


def _row(model_name: str, preset: str, iters: int, seed: int, fp_top1: float, model, calib, test) -> dict:
    recipe = resolve_recipe(preset)
    base = recipe.reconstruction or Reconstruction()
    recipe = replace(recipe, reconstruction=replace(base, iters=iters, seed=seed) if iters else None)
    t0 = time.perf_counter()
    quantize_(model, recipe, calib)
    seconds = time.perf_counter() - t0
    top1 = evaluate(model, test).top1
    load = os.getloadavg()[0]
    base = replace(recipe, reconstruction=None).to_dict()  # what the preset is made of, reconstruction aside
    digest = hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:12]
    made_of = f"reparam={recipe.reparam}, probs={recipe.probs.scheme}, norm={recipe.norm.scheme}"
    return dict(model=model_name, preset=preset, base=digest, made_of=made_of, iters=iters, seed=seed,
                fp_top1=fp_top1, top1=top1, seconds=seconds, load=load)  # fmt: skip


def table(rows: list[dict]) -> str:
    """Mean ± sample std over seeds per (model, preset, iters)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        made_of = r.get("made_of", f"base {r.get('base', '?')}")
        groups.setdefault((r["model"], r["preset"], made_of, r["iters"]), []).append(r)
    lines = [
        "| model | preset | made of | iters/block | seeds | top-1 (mean ± std) | drop (pt) | seconds (mean) "
        "| load (1 min) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (model, preset, made_of, iters), rs in sorted(groups.items()):
        tops = [r["top1"] for r in rs]
        std = statistics.stdev(tops) if len(tops) > 1 else 0.0
        mean = statistics.mean(tops)
        lines.append(
            f"| {model} | `{preset}` | {made_of} | {iters} | {len(rs)} | {mean:.2f} ± {std:.2f} | "
            f"{rs[0]['fp_top1'] - mean:.2f} | "
            f"{statistics.mean(r['seconds'] for r in rs):.0f} | {statistics.mean(r['load'] for r in rs):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vit-fmnist"])
    p.add_argument("--preset", default="recon-w4a4")
    p.add_argument("--iters", nargs="+", type=int, default=[0, 50, 100, 200, 400])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--calib-size", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "recon_iters.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    data = _load(out)
    done = {(r["model"], r["preset"], r["iters"], r["seed"], r.get("limit")) for r in data["rows"]}
    for model_name in args.models:
        float_model = ModelSource(model_name).load().eval()
        source = DataSource()
        test = source.eval_set(float_model, None)
        test = Subset(test, range(min(args.limit, len(test)))) if args.limit else test
        calib = calibration_subset(source.train_set(float_model, None), args.calib_size, seed=0)
        fp_top1 = evaluate(float_model, test).top1
        for iters in args.iters:
            for seed in args.seeds if iters else args.seeds[:1]:
                if (model_name, args.preset, iters, seed, args.limit) in done:
                    continue
                row = _row(model_name, args.preset, iters, seed, fp_top1, copy.deepcopy(float_model), calib, test)
                row["limit"] = args.limit
                data["rows"].append(row)
                data["environment"] = (
                    f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
                )
                write_json(out, data)
                print(json.dumps(row), flush=True)
    write_text(out.with_suffix(".md"), f"# Block reconstruction: top-1 against iterations\n\n{table(data['rows'])}\n")
    print(table(data["rows"]))


if __name__ == "__main__":
    main()
