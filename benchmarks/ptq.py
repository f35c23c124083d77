"""PTQ benchmark: every preset on both reference models; writes docs/results/ptq.md and .json.

Run:  .venv/bin/python benchmarks/ptq.py [--presets ...] [--limit N] [--calib-size 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from vitcompress.config import PRESETS, resolve_recipe
from vitcompress.io import write_json, write_text
from vitcompress.jobs import JobConfig, run_job
from vitcompress.models import list_models
from vitcompress.models.source import ModelSource

ROOT = Path(__file__).resolve().parents[1]


def table(rows: list[dict]) -> str:
    lines = [
        "| model | recipe | FP top-1 | Q top-1 | drop (pt) | rel. BOPs | size (KiB) | FP size (KiB) | PTQ s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in rows:
        lines.append(
            f"| {m['model']} | `{m['recipe']}` | {m['fp_top1']:.2f} | {m['q_top1']:.2f} | "
            f"{m['fp_top1'] - m['q_top1']:.2f} | {m['rel_bops']:.4f} | {m['size_bytes'] / 1024:.1f} | "
            f"{m['fp_size_bytes'] / 1024:.1f} | {m['ptq_seconds']:.1f} |"
        )
    return "\n".join(lines)


def merge(paths: list[str], out: Path) -> None:
    """Combine the results of separate runs (e.g. one per model) into one table."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for part in parts for r in part["rows"]]
    runs = "\n".join(f"- `{part.get('command', 'python benchmarks/ptq.py')}` ({part['environment']})" for part in parts)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "ptq.json", {"runs": [{k: v for k, v in p.items() if k != "rows"} for p in parts], "rows": rows})
    write_text(out / "ptq.md", f"# PTQ results\n\nRuns:\n{runs}\n\n{table(rows)}\n")


def _write(args: argparse.Namespace, rows: list[dict], t0: float, done: bool) -> None:
    """Write ptq.json and ptq.md (after every row: a long run keeps what it has)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    env = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"{time.perf_counter() - t0:.0f} s {'in all' if done else 'so far (unfinished)'}; "
        f"load average {load} (1/5/15 min) at the last row"
    )
    cmd = "python benchmarks/ptq.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None and k not in ("out", "merge")
    )
    write_json(out / "ptq.json", {"command": cmd, "environment": env, "rows": rows})
    write_text(out / "ptq.md", f"# PTQ results\n\nCommand: `{cmd}`\n\nEnvironment: {env}\n\n{table(rows)}\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=list_models())
    p.add_argument("--presets", nargs="+", default=[p for p in PRESETS if p != "fqvit"])
    p.add_argument("--calib-size", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    p.add_argument("--merge", nargs="+", default=None, help="only combine earlier ptq.json files into --out")
    args = p.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    t0 = time.perf_counter()
    for model in args.models:
        for preset in args.presets:
            job = JobConfig(ModelSource(model), calib_size=args.calib_size, limit=args.limit)
            m = run_job(job, resolve_recipe(preset)).metrics
            rows.append(m)
            print(
                f"{model} {preset}: {m['fp_top1']:.2f} -> {m['q_top1']:.2f} ({m['ptq_seconds']:.1f} s PTQ)", flush=True
            )
            _write(args, rows, t0, done=False)
    _write(args, rows, t0, done=True)
    print(table(rows))
    print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
