"""Low-bit PTQ ladder (issue 17): min-max -> fqvit -> +reparam -> +log√2 (-> +reconstruction) per bit width.

Each rung adds one technique to the one before it:

- ``minmax``: the plain preset at these bits (``w4a4`` ...);
- ``fqvit``: FQ-ViT's PTF LayerNorm inputs, log2 softmax, OMSE ranges, bias correction;
- ``reparam``: + RepQ-ViT post-LayerNorm reparameterization (``reparam: true``);
- ``logsqrt2``: + log√2 softmax quantizer (``probs: log_sqrt2``) = the ``repq-*`` preset below 8-bit activations
  (``repq-w4a8`` keeps uniform 8-bit probabilities);
- ``recon`` (with ``--recon``): + block reconstruction (``recipe.reconstruction``), one run per ``--seeds``.

Writes docs/results/lowbit.json and lowbit.md after every row (``--merge`` combines earlier JSON files, e.g. one
per model); the analysis below the table in docs/results/lowbit.md is written by hand.

Run:  .venv/bin/python benchmarks/lowbit.py [--models ...] [--bits w4a4 w3a3 w4a8] [--limit N] [--recon]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.io import write_json, write_text
from vitcompress.jobs import JobConfig, baseline_of, load_data, run_job
from vitcompress.models import list_models
from vitcompress.models.source import ModelSource

ROOT = Path(__file__).resolve().parents[1]
BITS = {"w4a4": (4, 4), "w3a3": (3, 3), "w4a8": (4, 8)}


def at_bits(recipe: Recipe, wb: int, ab: int, name: str) -> Recipe:
    """``recipe`` with weights at ``wb`` bits and the activation roles at ``ab`` (overrides kept).

    A role the preset keeps above its activation bits (plain ``w4a4``: probabilities and LayerNorm inputs at
    8 bit) keeps its bits unless ``ab`` is higher.
    """
    base = recipe.act.bits
    roles = {
        r: dataclasses.replace(spec, bits=ab if spec.bits == base else max(ab, spec.bits))
        for r in ("act", "qkv", "probs", "norm")
        for spec in [getattr(recipe, r)]
    }
    return dataclasses.replace(recipe, name=name, weight=dataclasses.replace(recipe.weight, bits=wb), **roles)


def _minmax(wb: int, ab: int) -> Recipe:
    return at_bits(get_preset("w4a4"), wb, ab, f"w{wb}a{ab}")


def _fqvit(wb: int, ab: int) -> Recipe:
    return at_bits(get_preset("fqvit-w4a4"), wb, ab, f"fqvit-w{wb}a{ab}")


def _reparam(wb: int, ab: int) -> Recipe:
    return dataclasses.replace(_fqvit(wb, ab), name=f"fqvit+reparam-w{wb}a{ab}", reparam=True)


def _logsqrt2(wb: int, ab: int) -> Recipe:
    return dataclasses.replace(
        _reparam(wb, ab), name=f"fqvit+reparam+logsqrt2-w{wb}a{ab}", probs=QuantSpec(ab, "log_sqrt2")
    )


RUNGS: dict[str, Callable[[int, int], Recipe]] = {
    "minmax": _minmax,
    "fqvit": _fqvit,
    "reparam": _reparam,
    "logsqrt2": _logsqrt2,
}


def recon_rung(wb: int, ab: int, seed: int, on: str = "logsqrt2") -> Recipe:
    """The reconstruction rung: rung ``on`` (the log√2 rung by default) plus block reconstruction seeded with
    ``seed`` (bias correction off, as in the ``recon-*`` presets: the learned rounding replaces it)."""
    from vitcompress.config import Reconstruction

    base = RUNGS[on](wb, ab)
    return dataclasses.replace(
        base, name=f"{base.name}+recon", bias_correction=False, reconstruction=Reconstruction(seed=seed)
    )


def _row(model: str, bits: str, rung: str, runs: list[dict]) -> dict:
    q = [m["q_top1"] for m in runs]
    return {
        "model": model,
        "bits": bits,
        "rung": rung,
        "recipe": runs[0].get("recipe", ""),
        "fp_top1": runs[0]["fp_top1"],
        "q_top1": statistics.mean(q),
        "q_top1_std": statistics.stdev(q) if len(q) > 1 else 0.0,
        "seeds": len(q),
        "ptq_seconds": statistics.mean(m.get("ptq_seconds", m["seconds"]) for m in runs),
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| model | bits | rung | FP top-1 | Q top-1 | drop (pt) | seeds | PTQ s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        q = f"{r['q_top1']:.2f}" + (f" ± {r['q_top1_std']:.2f}" if r["seeds"] > 1 else "")
        lines.append(
            f"| {r['model']} | {r['bits']} | {r['rung']} | {r['fp_top1']:.2f} | {q} | "
            f"{r['fp_top1'] - r['q_top1']:.2f} | {r['seeds']} | {r['ptq_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _write(out: Path, parts: list[dict]) -> None:
    rows = [r for part in parts for r in part["rows"]]
    runs = "\n".join(f"- `{p['command']}` ({p['environment']})" for p in parts)
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "lowbit.json", {"runs": [{k: v for k, v in p.items() if k != "rows"} for p in parts], "rows": rows}
    )
    write_text(out / "lowbit.md", f"# Low-bit PTQ ladder\n\nRuns:\n{runs}\n\n{table(rows)}\n")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list_models())
    p.add_argument("--bits", nargs="+", default=list(BITS), choices=list(BITS))
    p.add_argument("--rungs", nargs="*", default=list(RUNGS), choices=list(RUNGS), help="untrained rungs (none: -)")
    p.add_argument("--recon", action="store_true", help="add the block-reconstruction rung (one run per seed)")
    p.add_argument(
        "--recon-on", nargs="+", default=["logsqrt2"], choices=list(RUNGS), help="the rungs reconstruction starts from"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the reconstruction rung")
    p.add_argument("--calib-size", type=int, default=1000)
    p.add_argument("--limit", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    p.add_argument("--merge", nargs="+", default=None, help="only combine earlier lowbit.json files into --out")
    return p.parse_args()


def _recipes(args: argparse.Namespace, wb: int, ab: int) -> list[tuple[str, list[Recipe]]]:
    out = [(rung, [RUNGS[rung](wb, ab)]) for rung in args.rungs]
    if args.recon:
        for on in args.recon_on:
            name = "recon" if on == "logsqrt2" else f"{on}+recon"
            out.append((name, [recon_rung(wb, ab, s, on) for s in args.seeds]))
    return out


def main() -> None:
    args = _parse()
    if args.merge:
        _write(Path(args.out), [json.loads(Path(p).read_text()) for p in args.merge])
        return
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0, rows = time.perf_counter(), []
    for model in args.models:
        job = JobConfig(ModelSource(model), calib_size=args.calib_size, limit=args.limit)
        source = job.source.load()
        baseline = baseline_of(source, load_data(job, source, args.calib_size))  # the float model, once
        for bits in args.bits:
            for rung, recipes in _recipes(args, *BITS[bits]):
                runs = [{**run_job(job, r, baseline).metrics, "recipe": r.name} for r in recipes]
                rows.append(_row(model, bits, rung, runs))
                print(f"{model} {bits} {rung}: {rows[-1]['q_top1']:.2f} ({rows[-1]['ptq_seconds']:.1f} s)", flush=True)
                _write(Path(args.out), [_part(args, rows, t0, done=False)])  # a long run keeps what it has
    _write(Path(args.out), [_part(args, rows, t0, done=True)])
    print(table(rows))


def _part(args: argparse.Namespace, rows: list[dict], t0: float, done: bool) -> dict:
    env = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
        f"{time.perf_counter() - t0:.0f} s {'in all' if done else 'so far (unfinished)'}; "
        f"load average {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1/5/15 min) at the last row"
    )
    cmd = "python benchmarks/lowbit.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items()
        if v not in (None, False) and k not in ("out", "merge") and (args.recon or k not in ("recon_on", "seeds"))
    )
    return {"command": cmd, "environment": env, "rows": rows}


if __name__ == "__main__":
    main()
