"""Deployment benchmark: ONNX Runtime INT8 vs FP32 vs torch eager; accuracy of the exported model.

For each model: quantize (``--recipe``, default ``w8a8``), export FP32 and INT8 ONNX, time torch
eager FP32 / ORT FP32 / ORT INT8 at each batch size (``vitcompress.export.benchmark_deploy``), profile
ORT per op type at ``--profile-batch``, and for the reference models compare top-1 on the
Fashion-MNIST test set: fake-quant torch model vs ORT INT8 (and ORT FP32 vs the float model).
Results are merged by model into ``docs/results/deploy.json`` (so models can run separately).

Run:  .venv/bin/python benchmarks/deploy.py [--models ...] [--limit N] [--threads 1] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitcompress.config import resolve_recipe
from vitcompress.data import calibration_subset, load_dataset, make_loader
from vitcompress.export import OrtModule, benchmark_deploy, format_bench, ort_session
from vitcompress.export.onnx_export import _float_copy
from vitcompress.export.runtime import profile_ops
from vitcompress.io import write_json
from vitcompress.models import input_spec_of, load_model
from vitcompress.quantize import quantize_

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["vit-fmnist", "swin-fmnist", "timm:deit_small_patch16_224", "timm:swin_tiny_patch4_window7_224"]


@torch.no_grad()
def accuracy(model, fp_model, folder: Path, spec, limit: int | None, threads: int) -> dict:
    """Top-1 of fake-quant torch vs ORT INT8 and float torch vs ORT FP32 on the test set, and agreement."""
    data = load_dataset(spec, "test")
    if limit:
        data = torch.utils.data.Subset(data, range(min(limit, len(data))))
    int8 = OrtModule(ort_session(folder / "model-int8.onnx", threads))
    fp32 = OrtModule(ort_session(folder / "model-fp32.onnx", threads))
    n = hits_fq = hits_int8 = hits_fp = hits_ortfp = agree = 0
    max_abs = max_abs_fp = 0.0
    for x, y in tqdm(make_loader(data, 250), desc="accuracy", leave=False):
        fq, q8 = model(x), int8(x)
        fp, o32 = fp_model(x), fp32(x)
        n += len(y)
        hits_fq += int((fq.argmax(1) == y).sum())
        hits_int8 += int((q8.argmax(1) == y).sum())
        hits_fp += int((fp.argmax(1) == y).sum())
        hits_ortfp += int((o32.argmax(1) == y).sum())
        agree += int((fq.argmax(1) == q8.argmax(1)).sum())
        max_abs = max(max_abs, float((fq - q8).abs().max()))
        max_abs_fp = max(max_abs_fp, float((fp - o32).abs().max()))
    pct = lambda k: round(100.0 * k / n, 2)  # noqa: E731
    return {
        "images": n,
        "fp32_torch_top1": pct(hits_fp),
        "fp32_ort_top1": pct(hits_ortfp),
        "fakequant_top1": pct(hits_fq),
        "int8_ort_top1": pct(hits_int8),
        "int8_minus_fakequant_pt": round(100.0 * (hits_int8 - hits_fq) / n, 2),
        "top1_agreement_pct": pct(agree),
        "max_abs_logit_diff_int8": max_abs,
        "max_abs_logit_diff_fp32": max_abs_fp,
    }


def run_model(name: str, args: argparse.Namespace) -> dict:
    kw = {"num_classes": 10} if name.startswith("timm:") else {}
    model = load_model(name, **kw)
    spec = input_spec_of(model)
    calib = calibration_subset(load_dataset(spec, "train"), args.calib_size, seed=0)
    t0 = time.perf_counter()
    quantize_(model, resolve_recipe(args.recipe), calib, batch_size=32)
    out = {
        "model": name,
        "recipe": args.recipe,
        "calib_size": args.calib_size,
        "ptq_s": time.perf_counter() - t0,
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bench = benchmark_deploy(
            model,
            batches=tuple(args.batches),
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            rounds=args.rounds,
            work_dir=folder,
        )
        bench["model"] = name
        print(format_bench(bench), flush=True)
        out["bench"] = bench
        x = torch.randn(args.profile_batch, spec.in_chans, spec.img_size, spec.img_size)
        out["profile_ms"] = {
            f"{p}_b{args.profile_batch}": profile_ops(folder / f"model-{p}.onnx", x, args.threads, runs=3)
            for p in ("fp32", "int8")
        }
        out["onnx_bytes"] = {p: (folder / f"model-{p}.onnx").stat().st_size for p in ("fp32", "int8")}
        if not name.startswith("timm:"):  # random-weight timm models: accuracy means nothing
            with torch.no_grad():
                out["accuracy"] = accuracy(model, _float_copy(model).eval(), folder, spec, args.limit, args.threads)
            print(json.dumps(out["accuracy"]), flush=True)
    out["loadavg_after"] = os.getloadavg()
    return out


def ablation(args: argparse.Namespace) -> dict:
    """ViT-S at batch ``--profile-batch``: what moves the INT8/FP32 ratio (opt level, LN-input QDQ, threads)."""
    import dataclasses

    from vitcompress.config import QuantSpec
    from vitcompress.export import export_onnx
    from vitcompress.export.bench import time_engines

    name = "timm:deit_small_patch16_224"
    recipes = {
        "w8a8": resolve_recipe("w8a8"),
        "w8a8, LayerNorm inputs float": dataclasses.replace(resolve_recipe("w8a8"), norm=QuantSpec(32)),
    }
    x = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, recipe in enumerate(recipes.values()):
            model = load_model(name, num_classes=10)
            spec = input_spec_of(model)
            quantize_(model, recipe, calibration_subset(load_dataset(spec, "train"), 64, seed=0), batch_size=32)
            export_onnx(model, folder / f"int8-{i}.onnx", precision="int8")
            if i == 0:
                export_onnx(model, folder / "fp32.onnx", precision="fp32")
        x = torch.randn(args.profile_batch, spec.in_chans, spec.img_size, spec.img_size)
        variants = [
            ("w8a8", 0, "all", args.threads),
            ("w8a8", 0, "extended", args.threads),
            ("w8a8", 0, "basic", args.threads),
            ("w8a8, LayerNorm inputs float", 1, "all", args.threads),
            ("w8a8", 0, "all", 2),
        ]
        for tag, i, level, threads in variants:
            engines = {
                "ort-fp32": OrtModule(ort_session(folder / "fp32.onnx", threads, level)),
                "ort-int8": OrtModule(ort_session(folder / f"int8-{i}.onnx", threads, level)),
            }
            t = {r.engine: r for r in time_engines(engines, x, args.warmup, args.repeats, args.rounds)}
            rows.append(
                {
                    "recipe": tag,
                    "opt_level": level,
                    "threads": threads,
                    "fp32_median_ms": 1e3 * t["ort-fp32"].median_s,
                    "int8_median_ms": 1e3 * t["ort-int8"].median_s,
                    "fp32_min_ms": 1e3 * t["ort-fp32"].min_s,
                    "int8_min_ms": 1e3 * t["ort-int8"].min_s,
                    "speedup_median": t["ort-fp32"].median_s / t["ort-int8"].median_s,
                    "speedup_min": t["ort-fp32"].min_s / t["ort-int8"].min_s,
                    "loadavg": os.getloadavg(),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"model": name, "batch": args.profile_batch, "rows": rows}


def markdown(results: dict) -> str:
    """The tables of docs/deploy.md from deploy.json."""
    out = [
        "| model | batch | torch FP32 ms (min / median / max) | ORT FP32 ms | ORT INT8 ms | INT8 vs ORT FP32 "
        "(median) | INT8 vs torch | BOPs ratio | integer / float-compute kernels | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        b = r["bench"]
        t = {(x["engine"], x["batch"]): x for x in b["timings"]}
        for batch in sorted({x["batch"] for x in b["timings"]}):
            cells = {
                e: "{:.1f} / **{:.1f}** / {:.1f}".format(
                    *(1e3 * t[(e, batch)][k] for k in ("min_s", "median_s", "max_s"))
                )
                for e in ("torch-fp32", "ort-fp32", "ort-int8")
            }
            cell = cells.__getitem__
            k = b["kernels"]
            out.append(
                f"| `{name}` | {batch} | {cell('torch-fp32')} | {cell('ort-fp32')} | {cell('ort-int8')} | "
                f"**{b['speedups'][f'int8_vs_ort_fp32_b{batch}']:.2f}x** | "
                f"{b['speedups'][f'int8_vs_torch_fp32_b{batch}']:.2f}x | {b['bops_ratio']:.0f}x | "
                f"{k['integer']} / {k['float_compute']} | {r['loadavg_before'][0]:.1f}-"
                f"{r['loadavg_after'][0]:.1f} |"
            )
    out += [
        "",
        "| model | images | FP32 torch | FP32 ORT | fake-quant torch | INT8 ORT | INT8 − fake-quant (pt) | "
        "top-1 agreement | max abs logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        a = r.get("accuracy")
        if a:
            out.append(
                f"| `{name}` | {a['images']} | {a['fp32_torch_top1']:.2f} | {a['fp32_ort_top1']:.2f} | "
                f"{a['fakequant_top1']:.2f} | {a['int8_ort_top1']:.2f} | {a['int8_minus_fakequant_pt']:+.2f} | "
                f"{a['top1_agreement_pct']:.2f} % | {a['max_abs_logit_diff_int8']:.3f} |"
            )
    for name, r in results["runs"].items():
        for tag, prof in r["profile_ms"].items():
            total = sum(prof.values())
            top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(prof.items())[:8])
            out.append(f"\n`{name}` {tag}: {total:.1f} ms in kernels: {top}")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--recipe", default="w8a8")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="test images for accuracy (default: all 10,000)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile-batch", type=int, default=8)
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "deploy.json"))
    p.add_argument(
        "--ablation",
        action="store_true",
        help="only the ViT-S INT8/FP32 ablation (opt level, LayerNorm-input QDQ, threads) into the 'ablation' entry",
    )
    p.add_argument("--markdown", action="store_true", help="only print the markdown tables of --out")
    args = p.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    import onnxruntime

    if args.ablation:
        results["ablation"] = ablation(args)
        results["ablation"]["command"] = "python benchmarks/deploy.py " + " ".join(sys.argv[1:])
        write_json(out, results)
        return
    for name in args.models:
        r = run_model(name, args)
        r["command"] = "python benchmarks/deploy.py " + " ".join(sys.argv[1:])
        r["environment"] = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
        results["runs"][name] = r
        write_json(out, results)  # after every model: a long run keeps what it has measured


if __name__ == "__main__":
    main()
