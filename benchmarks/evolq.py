"""Evol-Q benchmark (docs/evolq.md): the rows of Table 1 of Evol-Q's supplementary material, the passes
curve (its Fig. 9), fitness and calibration-size ablations, wall time. Evol-Q: Frumkin, Gope,
Marculescu, "Jumping through Local Minima: Quantization in the Loss Landscape of Vision Transformers",
ICCV 2023, arXiv:2308.10814. One experiment per process writes ``runs/evolq/<tag>.json``;
``merge`` combines them into ``docs/results/evolq.json``, draws ``docs/results/evolq_passes_<model>.png``
and prints the markdown tables.

  python benchmarks/evolq.py table1  --model vit-fmnist --bits w4a8 --seeds 0 1 2 --pass-eval 2000
  python benchmarks/evolq.py fitness --model vit-fmnist --bits w4a8 --fitness infonce mse cosine kl --passes 3
  python benchmarks/evolq.py calib   --model vit-fmnist --bits w4a8 --sizes 128 512 --passes 3
  python benchmarks/evolq.py merge

Every run uses 1 torch thread (``--threads``), 1,000 PTQ calibration images (seeded subset of the
train split) and the default EvolQConfig unless the experiment changes one field. Final top-1 is on
``--eval-limit`` test images (default: all 10,000); the per-pass top-1 of ``table1`` on the first
``--pass-eval`` test images. The test set never steers the search. PTQ and Evol-Q run through
``vitcompress.compress_`` (a Recipe, then an EvolQConfig on the quantized model).
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import Subset  # noqa: E402

from vitcompress import compress_  # noqa: E402
from vitcompress.config import Recipe, get_preset  # noqa: E402
from vitcompress.data import calibration_subset, load_dataset, make_loader  # noqa: E402
from vitcompress.eval import evaluate  # noqa: E402
from vitcompress.io import write_json  # noqa: E402
from vitcompress.methods.evolq import EvolQConfig  # noqa: E402
from vitcompress.methods.evolq.allocator import keep_freed_memory  # noqa: E402
from vitcompress.methods.evolq.report import passes_chart as draw_passes  # noqa: E402
from vitcompress.models import input_spec_of, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "evolq"
RESULTS = ROOT / "docs" / "results"
log = logging.getLogger("evolq-bench")


def table1_recipes(bits: str) -> dict[str, Recipe]:
    """The paper's Table 1 rows: FQ-ViT with min-max ranges, + OMSE, + bias correction (= fqvit-<bits>);
    the plain min-max preset (uniform softmax and LayerNorm inputs) as a reference."""
    fq = get_preset(f"fqvit-{bits}")
    minmax = dataclasses.replace(
        fq,
        act=dataclasses.replace(fq.act, observer="minmax"),
        qkv=dataclasses.replace(fq.qkv, observer="minmax"),
        bias_correction=False,
    )
    return {
        "plain min-max preset": get_preset(bits),
        "FQ-ViT (min-max)": minmax,
        "+ OMSE": dataclasses.replace(fq, bias_correction=False),
        "+ bias corr.": fq,
    }


class TimedEval:
    """Evaluation batches that time their own loop, so search time excludes the per-pass evaluation."""

    def __init__(self, data, limit: int | None):
        self.data = Subset(data, range(min(limit or len(data), len(data))))
        self.seconds = self.cpu_seconds = 0.0

    def __iter__(self):
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield from make_loader(self.data, 256)
        finally:
            self.seconds += time.perf_counter() - t0
            self.cpu_seconds += time.process_time() - c0


class Bench:
    def __init__(self, model: str, seed: int, data_root: str | None):
        self.model_name = model
        spec = input_spec_of(load_model(model))
        self.train = load_dataset(spec, "train", data_root)
        self.test = load_dataset(spec, "test", data_root)
        self.calib = calibration_subset(self.train, 1000, seed=seed)

    def ptq(self, recipe: Recipe):
        return compress_(load_model(self.model_name), recipe, self.calib).model

    def top1(self, model, limit: int | None) -> float:
        return evaluate(model, self.test, limit=limit).top1

    def evolq(self, model, config: EvolQConfig, pass_eval: int | None, calib=None) -> dict:
        timed = TimedEval(self.test, pass_eval) if pass_eval else None
        t0, c0 = time.perf_counter(), time.process_time()
        # the model is quantized already: compress_ runs the search alone (no recipe, no PTQ)
        r = compress_(model, config, calib if calib is not None else self.calib, eval_data=timed).plan
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        eval_s, eval_cpu = (timed.seconds, timed.cpu_seconds) if timed else (0.0, 0.0)
        # wall time is inflated on a shared machine; CPU time of a 1-thread run is what an idle core takes
        return {
            "config": config.to_dict(),
            "history": r.history,
            "evaluations": r.evaluations,
            "wall_seconds": wall,
            "pass_eval_seconds": eval_s,
            "search_seconds": wall - eval_s,
            "search_cpu_seconds": cpu - eval_cpu,
            "fitness_before": r.fitness_before,
            "fitness_after": r.fitness_after,
        }


def run_table1(args, emit) -> dict:
    rows, runs = [], []
    for seed in args.seeds:
        bench = Bench(args.model, seed, args.data_root)
        last = None
        for name, recipe in table1_recipes(args.bits).items():
            last = bench.ptq(recipe)
            rows.append({"seed": seed, "variant": name, "top1": bench.top1(last, args.eval_limit)})
            log.info("%s %s seed %d %s: %.2f", args.model, args.bits, seed, name, rows[-1]["top1"])
        run = bench.evolq(last, EvolQConfig(seed=seed, passes=args.passes), args.pass_eval)
        run["seed"] = seed
        rows.append({"seed": seed, "variant": "+ Evol-Q", "top1": bench.top1(last, args.eval_limit)})
        runs.append(run)
        log.info(
            "%s %s seed %d + Evol-Q: %.2f (search %.0f s)",
            args.model,
            args.bits,
            seed,
            rows[-1]["top1"],
            run["search_seconds"],
        )
        emit({"rows": rows, "runs": runs})
    return {"rows": rows, "runs": runs}


def run_fitness(args, emit) -> dict:
    bench = Bench(args.model, args.seed, args.data_root)
    ptq = get_preset(f"fqvit-{args.bits}")
    rows = []
    for name in args.fitness:
        model = bench.ptq(ptq)
        run = bench.evolq(model, EvolQConfig(seed=args.seed, fitness=name, passes=args.passes), None)
        rows.append({"fitness": name, "seed": args.seed, "top1": bench.top1(model, args.eval_limit), **run})
        log.info(
            "%s %s fitness %s: %.2f (%.0f s)", args.model, args.bits, name, rows[-1]["top1"], run["search_seconds"]
        )
        emit({"rows": rows})
    return {"rows": rows}


def run_calib(args, emit) -> dict:
    bench = Bench(args.model, args.seed, args.data_root)
    rows = []
    for n in args.sizes:
        model = bench.ptq(get_preset(f"fqvit-{args.bits}"))
        calib = calibration_subset(bench.train, n, seed=args.seed)  # the first n of the 1,000 PTQ images
        run = bench.evolq(model, EvolQConfig(seed=args.seed, calib_size=n, passes=args.passes), None, calib)
        rows.append({"calib_size": n, "seed": args.seed, "top1": bench.top1(model, args.eval_limit), **run})
        log.info("%s %s calib %d: %.2f (%.0f s)", args.model, args.bits, n, rows[-1]["top1"], run["search_seconds"])
        emit({"rows": rows})
    return {"rows": rows}


# ---- merge -----------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> str:
    t = torch.tensor(values, dtype=torch.float64)
    return f"{t.mean():.2f}" if len(values) == 1 else f"{t.mean():.2f} ± {t.std():.2f}"


def passes_chart(path: Path, model: str, runs: list[dict]) -> None:
    curves = [{"label": f"{run['bits']} seed {run['seed']}", "history": run["history"]} for run in runs]
    draw_passes(path, model, curves, f"test top-1 (%), first {runs[0].get('pass_eval', '?')} images")


def merge(args) -> None:
    parts = [json.loads(p.read_text()) for p in sorted(RUNS.glob("*.json"))]
    parts = [p for p in parts if p.get("kind") in ("table1", "fitness", "calib")]
    write_json(RESULTS / "evolq.json", {"parts": parts})
    print(
        "## Table 1\n\n| model | bits | variant | seeds | top-1 (mean ± std) | per seed |\n|---|---|---|---|---:|---|"
    )
    by: dict[tuple, list] = {}  # (model, bits, variant) -> rows of every seed, over all parts
    for part in (p for p in parts if p["kind"] == "table1"):
        for r in part["rows"]:
            by.setdefault((part["model"], part["bits"], r["variant"]), []).append(r)
    for (model, bits, variant), rs in by.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        print(
            f"| {model} | {bits} | {variant} | {len(rs)} | {_mean_std([r['top1'] for r in rs])} | "
            + ", ".join(f"{r['top1']:.2f}" for r in rs)
            + " |"
        )
    print(
        "\n## Runs\n\n| model | bits | experiment | seed | passes | fitness before → after | search wall s | "
        "search CPU s | evals |\n|---|---|---|---|---:|---|---:|---:|---:|"
    )
    charts: dict[str, list] = {}
    for part in parts:
        runs = part.get("runs", []) + [r for r in part["rows"] if "history" in r]
        for run in runs:
            what = run["config"]["fitness"]
            if part["kind"] == "calib":
                what += f" calib {run['config']['calib_size']}"
            cpu = run.get("search_cpu_seconds")
            print(
                f"| {part['model']} | {part['bits']} | {part['kind']} {what} | {run['seed']} | "
                f"{run['config']['passes']} | {run['fitness_before']:.5f} → {run['fitness_after']:.5f} | "
                f"{run['search_seconds']:.0f} | {'—' if cpu is None else f'{cpu:.0f}'} | {run['evaluations']} |"
            )
            if run["history"][0]["top1"] is not None:
                charts.setdefault(part["model"], []).append(
                    {**run, "bits": part["bits"], "pass_eval": part["args"].get("pass_eval")}
                )
    for part in (p for p in parts if p["kind"] in ("fitness", "calib")):
        print(
            f"\n{part['model']} {part['bits']} {part['kind']}: "
            + ", ".join(f"{r.get('fitness', r.get('calib_size'))} {r['top1']:.2f}" for r in part["rows"])
        )
    for model, runs in charts.items():
        passes_chart(RESULTS / f"evolq_passes_{model}.png", model, runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=["table1", "fitness", "calib", "merge"])
    p.add_argument("--model", default="vit-fmnist")
    p.add_argument("--bits", default="w4a8", choices=["w3a8", "w4a8", "w8a8"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--fitness", nargs="+", default=["infonce", "mse", "cosine", "kl"])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    p.add_argument("--eval-limit", type=int, default=None, help="final top-1 on the first N test images")
    p.add_argument("--pass-eval", type=int, default=None, help="table1: per-pass top-1 on the first N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None)
    p.add_argument("--tag", default=None)
    args = p.parse_args()
    if args.kind == "merge":
        merge(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    t0 = time.perf_counter()
    env = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    RUNS.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{args.kind}_{args.model}_{args.bits}"

    def emit(result: dict, done: bool = False) -> None:  # after every row: a killed run keeps what it did
        write_json(
            RUNS / f"{tag}.json",
            {
                "kind": args.kind,
                "model": args.model,
                "bits": args.bits,
                "command": "python benchmarks/evolq.py " + " ".join(sys.argv[1:]),
                "environment": env,
                "seconds": time.perf_counter() - t0,
                "done": done,
                "args": vars(args),
                **result,
            },
        )

    result = {"table1": run_table1, "fitness": run_fitness, "calib": run_calib}[args.kind](args, emit)
    emit(result, done=True)


if __name__ == "__main__":
    main()
