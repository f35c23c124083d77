"""Deployment benchmark: INT8 vs FP32 in ONNX Runtime and OpenVINO, torch eager; accuracy of the exported model.

For each model: quantize (``--recipe``, default ``w8a8``), export FP32 and INT8 ONNX, time torch
eager FP32 and, per runtime, FP32 / INT8 (and OpenVINO's default bf16 on the FP32 file) at each
batch size, all engines alternating in one run (``vitcompress.export.benchmark_deploy``); profile
both runtimes per op type at ``--profile-batch`` (what stays float and its share of the time); for
the reference models compare top-1 on the Fashion-MNIST test set: fake-quant torch model vs INT8 in
each runtime (and FP32 in each runtime vs the float model). Results are merged by model into
``docs/results/deploy.json`` (so models can run separately). Each model's entry records the
1-minute load average (``os.getloadavg``) before and after its timing; ``--wait-load L`` first waits
(polling every 30 s, at most 15 minutes) until it is below ``L``.

Run:  .venv/bin/python benchmarks/deploy.py [--models ...] [--runtime all] [--limit N] [--threads 1] [--repeats 20]
      .venv/bin/python benchmarks/deploy.py --ablation      (export layout x runtime, DeiT-S batch 8)
      .venv/bin/python benchmarks/deploy.py --markdown      (the tables of docs/deploy.md)
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
from vitcompress.export.bench import resolve_runtimes
from vitcompress.export.onnx_export import _float_copy
from vitcompress.export.runtime import INTEGER_OPS, profile_ops
from vitcompress.io import write_json
from vitcompress.models import input_spec_of, load_model
from vitcompress.quantize import quantize_

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["vit-fmnist", "swin-fmnist", "timm:deit_small_patch16_224", "timm:swin_tiny_patch4_window7_224"]
ABLATION_MODEL = "timm:deit_small_patch16_224"


def wait_for_load(limit: float | None, poll_s: float = 30.0, give_up_s: float = 900.0) -> dict:
    """Wait until the 1-minute load average is below ``limit`` (None: don't wait); what happened."""
    t0 = time.monotonic()
    while limit is not None and os.getloadavg()[0] >= limit and time.monotonic() - t0 < give_up_s:
        print(f"load {os.getloadavg()[0]:.2f} >= {limit}: waiting", flush=True)
        time.sleep(poll_s)
    load = os.getloadavg()[0]
    return {
        "limit": limit,
        "waited_s": round(time.monotonic() - t0, 1),
        "load": load,
        "below": limit is None or load < limit,
    }


def _engines_for_accuracy(folder: Path, threads: int, runtimes: tuple[str, ...]) -> dict:
    engines = {}
    if "ort" in runtimes:
        engines["ort-int8"] = OrtModule(ort_session(folder / "model-int8.onnx", threads))
        engines["ort-fp32"] = OrtModule(ort_session(folder / "model-fp32.onnx", threads))
    if "openvino" in runtimes:
        from vitcompress.export.openvino import OvModule, ov_compile

        engines["openvino-int8"] = OvModule(ov_compile(folder / "model-int8.onnx", threads, "f32"))
        engines["openvino-fp32"] = OvModule(ov_compile(folder / "model-fp32.onnx", threads, "f32"))
    return engines


@torch.no_grad()
def accuracy(model, fp_model, folder: Path, spec, limit: int | None, threads: int, runtimes: tuple[str, ...]) -> dict:
    """Top-1 on the test set: fake-quant torch, float torch, and each runtime's INT8 / FP32 file.

    INT8 is compared with the fake-quant model (top-1 difference, agreement, max logit difference),
    FP32 with the float model.
    """
    data = load_dataset(spec, "test")
    if limit:
        data = torch.utils.data.Subset(data, range(min(limit, len(data))))
    engines = _engines_for_accuracy(folder, threads, runtimes)
    hits = dict.fromkeys(["fakequant", "fp32_torch", *engines], 0)
    agree = dict.fromkeys(engines, 0)
    max_abs = dict.fromkeys(engines, 0.0)
    n = 0
    for x, y in tqdm(make_loader(data, 250), desc="accuracy", leave=False):
        ref = {"int8": model(x), "fp32": fp_model(x)}
        n += len(y)
        hits["fakequant"] += int((ref["int8"].argmax(1) == y).sum())
        hits["fp32_torch"] += int((ref["fp32"].argmax(1) == y).sum())
        for name, engine in engines.items():
            out, r = engine(x), ref[name.rsplit("-", 1)[1]]
            hits[name] += int((out.argmax(1) == y).sum())
            agree[name] += int((out.argmax(1) == r.argmax(1)).sum())
            max_abs[name] = max(max_abs[name], float((out - r).abs().max()))
    pct = lambda k: round(100.0 * k / n, 2)  # noqa: E731
    result: dict = {"images": n, "top1": {k: pct(v) for k, v in hits.items()}}
    result["int8_minus_fakequant_pt"] = {
        k: round(100.0 * (hits[k] - hits["fakequant"]) / n, 2) for k in engines if k.endswith("int8")
    }
    result["top1_agreement_pct"] = {k: pct(v) for k, v in agree.items()}
    result["max_abs_logit_diff"] = max_abs
    return result


def _integer_op(op: str, runtime: str) -> bool:
    return op in INTEGER_OPS if runtime == "ort" else op.endswith("(int8)")


def float_share(profile: dict[str, float], runtime: str) -> dict:
    """Kernel time of a runtime's INT8 profile split into integer kernels and the rest (float ops and
    quantize/dequantize conversions), with the float ops listed."""
    total = sum(profile.values())
    rest = {op: ms for op, ms in profile.items() if not _integer_op(op, runtime)}
    return {
        "total_ms": round(total, 2),
        "integer_ms": round(total - sum(rest.values()), 2),
        "other_ms": round(sum(rest.values()), 2),
        "other_share": round(sum(rest.values()) / total, 3) if total else 0.0,
        "other_ops": rest,
    }


def profiles(folder: Path, x: torch.Tensor, threads: int, runtimes: tuple[str, ...]) -> dict:
    """Per-op-type kernel milliseconds of every engine at one batch (3 profiled runs each)."""
    b = len(x)
    out: dict = {}
    if "ort" in runtimes:
        for p in ("fp32", "int8"):
            out[f"ort-{p}_b{b}"] = profile_ops(folder / f"model-{p}.onnx", x, threads, runs=3)
    if "openvino" in runtimes:
        from vitcompress.export.openvino import has_bf16, ov_profile_ops

        variants = [("fp32", "fp32", "f32"), ("int8", "int8", "f32")] + (
            [("bf16", "fp32", "bf16")] if has_bf16() else []
        )
        for tag, file, precision in variants:
            out[f"openvino-{tag}_b{b}"] = ov_profile_ops(folder / f"model-{file}.onnx", x, threads, 3, precision)
    return out


def run_model(name: str, args: argparse.Namespace) -> dict:
    kw = {"num_classes": 10} if name.startswith("timm:") else {}
    model = load_model(name, **kw)
    spec = input_spec_of(model)
    calib = calibration_subset(load_dataset(spec, "train"), args.calib_size, seed=0)
    t0 = time.perf_counter()
    quantize_(model, resolve_recipe(args.recipe), calib, batch_size=32)
    runtimes = resolve_runtimes(args.runtime)
    out = {"model": name, "recipe": args.recipe, "calib_size": args.calib_size, "ptq_s": time.perf_counter() - t0}
    out["load_wait"] = wait_for_load(args.wait_load)
    out["loadavg_before"] = os.getloadavg()
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
            runtime=args.runtime,
        )
        out["loadavg_after_timing"] = os.getloadavg()
        bench["model"] = name
        print(format_bench(bench), flush=True)
        out["bench"] = bench
        x = torch.randn(args.profile_batch, spec.in_chans, spec.img_size, spec.img_size)
        out["profile_ms"] = profiles(folder, x, args.threads, runtimes)
        out["int8_time_split"] = {
            rt: float_share(out["profile_ms"][f"{rt}-int8_b{args.profile_batch}"], rt) for rt in runtimes
        }
        out["onnx_bytes"] = {p: (folder / f"model-{p}.onnx").stat().st_size for p in ("fp32", "int8")}
        if not name.startswith("timm:"):  # random-weight timm models: accuracy means nothing
            with torch.no_grad():
                fp_model = _float_copy(model).eval()
                out["accuracy"] = accuracy(model, fp_model, folder, spec, args.limit, args.threads, runtimes)
            print(json.dumps(out["accuracy"]), flush=True)
    out["loadavg_after"] = os.getloadavg()
    return out


def ablation(args: argparse.Namespace) -> dict:
    """DeiT-S at batch ``--profile-batch``: each export layout in each runtime, next to the FP32 and
    bf16 baselines, all engines alternating in one timing run."""
    import dataclasses

    from vitcompress.export import export_onnx
    from vitcompress.export.bench import time_engines
    from vitcompress.export.convert import Layout
    from vitcompress.export.openvino import OvModule, ov_compile

    layouts = {
        "plain (before #16)": Layout(zero_point_free=False, integer_transposes=False),
        "zero-point-free attention": Layout(zero_point_free=True, integer_transposes=False),
        "integer transposes": Layout(zero_point_free=False, integer_transposes=True),
        "both (default)": Layout(),
    }
    model = load_model(ABLATION_MODEL, num_classes=10)
    spec = input_spec_of(model)
    quantize_(model, resolve_recipe("w8a8"), calibration_subset(load_dataset(spec, "train"), 64, seed=0), batch_size=32)
    x = torch.randn(args.profile_batch, spec.in_chans, spec.img_size, spec.img_size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_onnx(model, folder / "fp32.onnx", precision="fp32")
        engines = {
            "ort fp32": OrtModule(ort_session(folder / "fp32.onnx", args.threads)),
            "openvino fp32 (f32)": OvModule(ov_compile(folder / "fp32.onnx", args.threads, "f32")),
            "openvino fp32 (bf16)": OvModule(ov_compile(folder / "fp32.onnx", args.threads, "bf16")),
        }
        agreement = {}
        for i, (tag, layout) in enumerate(layouts.items()):
            path = folder / f"int8-{i}.onnx"
            export_onnx(model, path, precision="int8", layout=layout)
            engines[f"ort int8, {tag}"] = OrtModule(ort_session(path, args.threads))
            engines[f"openvino int8, {tag}"] = OvModule(ov_compile(path, args.threads, "f32"))
            with torch.no_grad():
                ref = model(x)
                agreement[tag] = {
                    rt: float((ref - engines[f"{rt} int8, {tag}"](x)).abs().max()) for rt in ("ort", "openvino")
                }
        last = folder / f"int8-{len(layouts) - 1}.onnx"
        engines["openvino int8 (bf16 float ops), both (default)"] = OvModule(ov_compile(last, args.threads, "bf16"))
        load = {"wait": wait_for_load(args.wait_load), "before": os.getloadavg()}
        timings = time_engines(engines, x, args.warmup, args.repeats, args.rounds)
        load["after"] = os.getloadavg()
    rows = [dataclasses.asdict(t) for t in timings]
    for row in rows:
        print(f"{row['engine']:<55} median {1e3 * row['median_s']:7.1f} ms  min {1e3 * row['min_s']:7.1f}", flush=True)
    return {
        "model": ABLATION_MODEL,
        "batch": args.profile_batch,
        "rows": rows,
        "max_abs_vs_fakequant": agreement,
        **load,
    }


def _ms(t: dict) -> str:
    return "{:.1f} / **{:.1f}** / {:.1f}".format(*(1e3 * t[k] for k in ("min_s", "median_s", "max_s")))


def _speed_rows(name: str, r: dict) -> list[str]:
    b = r["bench"]
    t = {(x["engine"], x["batch"]): x for x in b["timings"]}
    rows = []
    for batch in sorted({x["batch"] for x in b["timings"]}):
        key = str(batch)
        cells = [_ms(t[(e, batch)]) if (e, batch) in t else "–" for e in ENGINE_COLUMNS]
        sp = [f"{b['speedup'][rt][key]:.2f}x" if rt in b["speedup"] else "–" for rt in ("ort", "openvino")]
        best = f"**{b['speedup_vs_best_fp32'][key]:.2f}x**"
        bf16 = f"**{b['speedup_vs_bf16'][key]:.2f}x**" if key in b["speedup_vs_bf16"] else "–"
        load = f"{r['loadavg_before'][0]:.2f}-{r['loadavg_after_timing'][0]:.2f}"
        rows.append(f"| `{name}` | {batch} | {' | '.join(cells)} | {' | '.join(sp)} | {best} | {bf16} | {load} |")
    return rows


ENGINE_COLUMNS = ("torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")


def markdown(results: dict) -> str:
    """The tables of docs/deploy.md from deploy.json."""
    out = [
        "| model | batch | torch FP32 ms (min / median / max) | ORT FP32 | ORT INT8 | OpenVINO f32 | OpenVINO bf16 | "
        "OpenVINO INT8 | ORT INT8/FP32 | OV INT8/FP32 | fastest INT8 vs fastest f32 | vs OV bf16 | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["runs"].items():
        if "speedup" in r["bench"]:
            out += _speed_rows(name, r)
    out += [
        "",
        "| model | images | fake-quant | ORT INT8 | OpenVINO INT8 | ORT Δ (pt) | OV Δ (pt) | agreement ORT / OV |",
    ]
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results["runs"].items():
        a = r.get("accuracy")
        if a and "top1" in a:
            top, d, ag = a["top1"], a["int8_minus_fakequant_pt"], a["top1_agreement_pct"]
            out.append(
                f"| `{name}` | {a['images']} | {top['fakequant']:.2f} | {top.get('ort-int8', float('nan')):.2f} | "
                f"{top.get('openvino-int8', float('nan')):.2f} | {d.get('ort-int8', float('nan')):+.2f} | "
                f"{d.get('openvino-int8', float('nan')):+.2f} | {ag.get('ort-int8', float('nan')):.2f} / "
                f"{ag.get('openvino-int8', float('nan')):.2f} % |"
            )
    for name, r in results["runs"].items():
        for rt, s in r.get("int8_time_split", {}).items():
            top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(s["other_ops"].items())[:8])
            out.append(
                f"\n`{name}` {rt} INT8: {s['total_ms']:.1f} ms in kernels, {s['integer_ms']:.1f} integer, "
                f"{s['other_ms']:.1f} ({100 * s['other_share']:.0f} %) not: {top}"
            )
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--runtime", default="all", choices=["ort", "openvino", "all"])
    p.add_argument("--recipe", default="w8a8")
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="test images for accuracy (default: all 10,000)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--profile-batch", type=int, default=8)
    p.add_argument("--wait-load", type=float, default=None, help="wait until the 1-minute load is below this")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "deploy.json"))
    p.add_argument("--ablation", action="store_true", help="only the DeiT-S layout x runtime ablation ('ablation')")
    p.add_argument("--markdown", action="store_true", help="only print the markdown tables of --out")
    return p


def _environment() -> dict:
    import onnxruntime

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import openvino

        env["openvino"] = openvino.__version__
    except ImportError:
        pass
    return env


def main() -> None:
    args = _parser().parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": {}}
    command = "python benchmarks/deploy.py " + " ".join(sys.argv[1:])
    if args.ablation:
        results["ablation"] = {**ablation(args), "command": command, "environment": _environment()}
        write_json(out, results)
        return
    for name in args.models:
        r = run_model(name, args)
        r["command"] = command
        r["environment"] = _environment()
        results["runs"][name] = r
        write_json(out, results)  # after every model: a long run keeps what it has measured


if __name__ == "__main__":
    main()
