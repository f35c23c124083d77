"""GPUSQ-ViT benchmark: dense FP, 2:4 one-shot, 2:4 fine-tuned without / with distillation, 2:4+INT8,
4:8+INT4, and the ablation of Table 3 in shape (weight factor off, soft loss off, feature loss off) of
Yu, Chen, Gan, Fan, "Boost Vision Transformer with GPU-Friendly Sparsity and Quantization", CVPR 2023,
arXiv:2305.10727 (supplementary material).

Each variant runs in its own process (run them in parallel, one thread each) and writes
``<out>/<model>/<variant>.json``; ``--merge`` collects them into ``docs/results/gpusq.json``.

    python benchmarks/gpusq.py --model vit-fmnist --variant int8 --steps 300
    python benchmarks/gpusq.py --merge --out runs/gpusq --json docs/results/gpusq.json

Ablation variants (``int8-no-wf`` ...) change stage 2 only and reuse the stage-1 checkpoint of the
matching main run (``int8`` / ``int4``), so run those first.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars (tqdm reads it on import)

import torch  # noqa: E402

from vitcompress.cost import cost  # noqa: E402
from vitcompress.data.datasets import calibration_subset, load_dataset  # noqa: E402
from vitcompress.eval.classification import evaluate  # noqa: E402
from vitcompress.jobs import JobConfig, run_job  # noqa: E402
from vitcompress.methods.gpusq import gpusq_, gpusq_preset  # noqa: E402
from vitcompress.models.registry import input_spec_of, load_model  # noqa: E402
from vitcompress.models.source import ModelSource  # noqa: E402
from vitcompress.sparsity import sparsify_  # noqa: E402

ABLATIONS = {"no-wf": {"weight_factors": False}, "no-soft": {"soft": False}, "no-feat": {"feature": False}}
VARIANTS = ("dense", "oneshot", "prune-ce", "int8", "int4") + tuple(
    f"{fmt}-{a}" for fmt in ("int8", "int4") for a in ABLATIONS
)


def _eval(model, test, limit):
    m = evaluate(model, test, limit=limit)
    c = cost(model)
    return {
        "top1": m.top1,
        "top5": m.top5,
        "images": m.images,
        "size_bytes": c.size_bytes,
        "bops": c.bops,
        "rel_bops": c.rel_bops,
    }


def run_variant(args) -> dict:
    """One variant on one model; the result dict written to JSON."""
    out = Path(args.out) / args.model
    if args.variant in ("dense", "oneshot", "prune-ce"):
        model = load_model(args.model)
        spec = input_spec_of(model)
        test = load_dataset(spec, "test", args.data_root)
        if args.variant == "dense":
            return _eval(model, test, args.limit)
        if args.variant == "oneshot":
            sparsify_(model, "2:4", on_indivisible="skip")
            return _eval(model, test, args.limit)
        config = replace(gpusq_preset("gpusq-int8", args.steps, batch_size=args.batch_size), distill_prune=False)
        train_set = load_dataset(spec, "train", args.data_root, augment=True)
        calib = calibration_subset(load_dataset(spec, "train", args.data_root), config.calib_size)
        res = gpusq_(
            model,
            train_set,
            calib,
            config,
            state_dir=out / "prune-ce" / "state",
            resume=args.resume,
            stop_after_prune=True,
        )
        return {**_eval(model, test, args.limit), "prune": {k: res["prune"][k] for k in ("steps", "seconds", "final")}}
    fmt, _, ablation = args.variant.partition("-")
    config = gpusq_preset(f"gpusq-{fmt}", args.steps, batch_size=args.batch_size)
    if ablation:
        config = replace(config, distill=replace(config.distill, **ABLATIONS[ablation]), eval_stages=False)
        source = out / fmt / "state" / "prune" / "trainer_state.pt"
        if not source.is_file():
            raise SystemExit(f"{args.variant} reuses the stage-1 checkpoint {source}: run --variant {fmt} first")
        target = out / args.variant / "state" / "prune"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target / "trainer_state.pt")
    job = JobConfig(
        source=ModelSource(args.model),
        out=str(out / args.variant),
        calib_size=config.calib_size,
        limit=args.limit,
        resume=bool(ablation) or args.resume,
        data_root=args.data_root,
    )
    m = run_job(job, config).metrics
    keep = (
        "fp_top1",
        "sparse_float_top1",
        "ptq_top1",
        "q_top1",
        "q_top5",
        "eval_images",
        "size_bytes",
        "fp_size_bytes",
        "size_reduction",
        "bops",
        "fp_bops",
        "bops_reduction",
        "rel_bops",
        "weight_factors",
        "prune",
        "qat",
        "seconds",
    )
    return {k: m[k] for k in keep}


def merge(out: Path) -> dict:
    results: dict = {}
    for path in sorted(out.glob("*/*.json")):
        results.setdefault(path.parent.name, {})[path.stem] = json.loads(path.read_text())
    return results


ROWS = (
    ("dense", "dense FP32"),
    ("oneshot", "2:4 one-shot magnitude pruning, no training"),
    ("prune-ce", "2:4 fine-tuned without distillation (hard labels only)"),
    ("int8:sparse_float_top1", "2:4 fine-tuned with distillation (stage 1 of gpusq-int8)"),
    ("int8", "2:4 + INT8 (gpusq-int8)"),
    ("int4:sparse_float_top1", "4:8 fine-tuned with distillation (stage 1 of gpusq-int4)"),
    ("int4", "4:8 + INT4 weights, INT8 activations (gpusq-int4)"),
)


def _top1(res: dict, key: str) -> float | None:
    name, _, field = key.partition(":")
    r = res.get(name)
    if r is None:
        return None
    return r.get(field or ("q_top1" if "q_top1" in r else "top1"))


def markdown(results: dict) -> str:
    """Main table and ablation table per model (top-1 on the evaluated images, drop vs dense)."""
    lines = []
    for model, res in results.items():
        fp = _top1(res, "dense")
        lines += [
            f"### {model}",
            "",
            "| variant | top-1 (%) | vs dense (pt) | size vs FP32 | BOPs vs FP32 |",
            "|---|---:|---:|---:|---:|",
        ]
        for key, label in ROWS:
            t = _top1(res, key)
            if t is None:
                continue
            r = res[key.partition(":")[0]]
            size = f"×{r['size_reduction']:.2f}" if "size_reduction" in r and ":" not in key else "-"
            bops = f"×{r['bops_reduction']:.1f}" if "bops_reduction" in r and ":" not in key else "-"
            if key in ("dense", "oneshot", "prune-ce"):  # float models: ratios against the dense run's own cost
                d = res["dense"]
                size, bops = f"×{d['size_bytes'] / r['size_bytes']:.2f}", f"×{d['bops'] / r['bops']:.2f}"
            lines.append(f"| {label} | {t:.2f} | {t - fp:+.2f} | {size} | {bops} |")
        abl = [
            (f"{fmt}{suffix}", f"{fmt.upper()} {what}")
            for fmt in ("int8", "int4")
            for suffix, what in (
                ("", "full (α, β, γ = 1, 10, 5, weight factor on)"),
                ("-no-wf", "weight factor off"),
                ("-no-soft", "soft loss off (β = 0)"),
                ("-no-feat", "feature loss off (γ = 0)"),
            )
        ]
        if any(k in res for k, _ in abl if "-" in k):
            lines += ["", "| ablation (stage 2 only) | top-1 (%) | vs full (pt) |", "|---|---:|---:|"]
            for key, label in abl:
                if key in res:
                    full = res[key.split("-")[0]]["q_top1"]
                    lines.append(f"| {label} | {res[key]['q_top1']:.2f} | {res[key]['q_top1'] - full:+.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit-fmnist")
    p.add_argument("--variant", choices=VARIANTS)
    p.add_argument("--steps", type=int, default=300, help="steps per stage")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--out", default="runs/gpusq")
    p.add_argument("--merge", action="store_true", help="collect <out>/*/*.json")
    p.add_argument("--json", default=None, help="with --merge: write the merged results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if args.merge:
        results = merge(Path(args.out))
        text = json.dumps(results, indent=2)
        if args.json:
            Path(args.json).write_text(text + "\n")
        print(markdown(results))
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    res = run_variant(args)
    res.update(
        variant=args.variant,
        model=args.model,
        steps=args.steps,
        batch_size=args.batch_size,
        wall_seconds=time.perf_counter() - t0,
        threads=args.threads,
        command=" ".join(["python", "benchmarks/gpusq.py", *(argv or sys.argv[1:])]),
    )
    path = Path(args.out) / args.model / f"{args.variant}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("prune", "qat")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
