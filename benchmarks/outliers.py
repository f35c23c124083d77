"""Outlier-robust presets (issue 14, item 7): logits cosine / SQNR to float per ViT family and preset, with the
LayerNorm-input quantizers' leading tokens apart (the presets) and without (``prefix_tokens: 0``, as before).

Random-weight models from ``tests/families.py`` (LayerScale 0.1), 32 calibration images, 16 other test images.
Writes docs/results/outliers.md and .json.

Run:  .venv/bin/python benchmarks/outliers.py [--families ...] [--presets w8a8 fqvit-w8a8] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitcompress.config import get_preset
from vitcompress.errors import first_line
from vitcompress.io import write_json, write_text
from vitcompress.nn.convert import quantization_points
from vitcompress.quantize import quantize_

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from families import FAMILIES, build, images  # noqa: E402


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    """Mean and worst per-image cosine, and SQNR (dB) of the logits ``out`` against ``ref``."""
    cos = torch.nn.functional.cosine_similarity(ref.flatten(1), out.flatten(1))
    sqnr = 10 * torch.log10(ref.pow(2).sum() / (ref - out).pow(2).sum().clamp_min(1e-30))
    return {"cosine": cos.mean().item(), "cosine_min": cos.min().item(), "sqnr_db": sqnr.item()}


def run(family: str, preset: str, apart: bool, calib: int, test: int) -> dict:
    recipe = get_preset(preset)
    if not apart:
        recipe = dataclasses.replace(recipe, norm=dataclasses.replace(recipe.norm, prefix_tokens=0))
    model = build(family)
    x = images(family, test, seed=2)
    row = {"family": family, "preset": preset, "tokens_apart": apart}
    try:
        with torch.no_grad():
            ref = model(x)
            t0 = time.perf_counter()
            quantize_(model, recipe, [images(family, calib, seed=1)])
            row["ptq_seconds"] = time.perf_counter() - t0
            row.update(compare(ref, model(x)))
    except Exception as e:  # noqa: BLE001 (a family not supported yet is a row, not a crash)
        row["error"] = f"{type(e).__name__}: {first_line(e)}"
        return row
    counts = [qz.prefix_count for _, qz in quantization_points(model) if hasattr(qz, "prefix_count")]
    row["prefix_tokens_found"] = sorted(set(counts))
    return row


def cell(r: dict | None) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "n/a"
    return f"{r['cosine']:.4f} ({r['cosine_min']:.3f}) / {r['sqnr_db']:.1f} dB"


def table(rows: list[dict], presets: list[str]) -> str:
    head = "| family | " + " | ".join(f"`{p}` before | `{p}` after" for p in presets) + " | tokens apart |"
    lines = [head, "|---|" + "---:|---:|" * len(presets) + "---|"]
    index = {(r["family"], r["preset"], r["tokens_apart"]): r for r in rows}
    for family in dict.fromkeys(r["family"] for r in rows):
        cells = [cell(index.get((family, p, a))) for p in presets for a in (False, True)]
        after = index.get((family, presets[0], True), {})
        found = after.get("prefix_tokens_found", after.get("error", ""))
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {found} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--presets", nargs="+", default=["w8a8", "fqvit-w8a8"])
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--test", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    jobs = [(f, pr, a) for f in args.families for pr in args.presets for a in (False, True)]
    rows = [run(f, pr, a, args.calib, args.test) for f, pr, a in tqdm(jobs, desc="outliers", total=len(jobs))]
    load = os.getloadavg()[0]
    env = (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"load average {load:.1f}; {time.perf_counter() - t0:.0f} s in all"
    )
    cmd = "python benchmarks/outliers.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None and k != "out"
    )
    errors = "\n".join(
        f"- {r['family']} `{r['preset']}`: {r['error']}" for r in rows if "error" in r and r["tokens_apart"]
    )
    text = (
        f"# Outlier-robust presets: logits against float per family\n\nCommand: `{cmd}`\n\nEnvironment: {env}\n\n"
        "Cells: mean cosine (worst image) / SQNR of the logits. *before*: one scale per LayerNorm input "
        "(`prefix_tokens: 0`); *after*: the presets (leading tokens apart, `prefix_tokens: 16`). "
        "*tokens apart*: the numbers of leading tokens set apart, over the model's quantizers.\n\n"
        f"{table(rows, args.presets)}\n" + (f"\nNot run:\n{errors}\n" if errors else "")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "outliers.json", {"command": cmd, "environment": env, "rows": rows})
    write_text(out / "outliers.md", text)
    print(text)
    print(json.dumps({"seconds": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
