"""``vitcompress export`` and ``vitcompress bench``: ONNX export and the deployment benchmark.

The main console script wires them in with ``add_export_arguments``/``run_export`` and
``add_bench_arguments``/``run_bench``. Errors (:class:`~vitcompress.errors.VitCompressError`)
propagate to the caller, which prints them as one line.

``--model`` is a folder written by ``vitcompress compress`` (or ``vitcompress.save``), which is
restored quantized, or a model name (zoo name or ``timm:<name>``), which is loaded float and, with
``--recipe``, quantized on ``--calib-size`` Fashion-MNIST training images (fitted to the model's
input size). ``bench`` needs a quantized model, so a name without ``--recipe`` uses ``w8a8``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "fp32")  # as vitcompress.export.onnx_export (not imported: no torch here)
POLICIES = ("promote", "float", "error")
OPT_LEVELS = ("disable", "basic", "extended", "all")


def _add_model_arguments(p: argparse.ArgumentParser, default_recipe: str | None) -> None:
    p.add_argument("--model", required=True, help="folder written by `compress` (quantized), zoo name or timm:<name>")
    p.add_argument("--recipe", default=default_recipe,
                   help="with a model name: quantize with this preset or YAML/JSON recipe first"
                        + (f" (default {default_recipe})" if default_recipe else " (default: export it float)"))
    p.add_argument("--calib-size", type=int, default=256, help="calibration images (Fashion-MNIST train split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--num-classes", type=int, default=None, help="timm:<name> models only")
    p.add_argument("--img-size", type=int, default=None, help="timm:<name> models only")
    p.add_argument("--policy", default="promote", choices=POLICIES,
                   help="points ONNX Runtime cannot run at their bits (activations below 8 bit, log2): "
                        "promote to 8 bit (default), keep float, or error")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``export`` options to ``p``."""
    _add_model_arguments(p, default_recipe=None)
    p.add_argument("--out", required=True, help="the .onnx file to write (its folder must exist)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="int8: QDQ graph (quantized model); fp32: float graph; auto: int8 if quantized")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..20 (default 17)")


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """Add the ``bench`` options to ``p``."""
    _add_model_arguments(p, default_recipe="w8a8")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    p.add_argument("--threads", type=int, default=1, help="torch and ORT intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per engine and batch (default 5)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per engine and batch (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="alternate the engines this many times (default 3)")
    p.add_argument("--opt-level", default="all", choices=OPT_LEVELS, help="ORT graph optimization level")
    p.add_argument("--keep-onnx", default=None, help="write the two ONNX files to this folder (default: temporary)")


def load_for_export(args: argparse.Namespace):
    """The model ``--model`` names: restored quantized, or loaded (and quantized with ``--recipe``)."""
    from vitcompress.models.registry import load_model
    from vitcompress.quantize import restore

    path = Path(args.model)
    if path.is_dir():
        return restore(path / "model" if (path / "model").is_dir() else path)
    extra = {k: v for k, v in (("num_classes", args.num_classes), ("img_size", args.img_size)) if v is not None}
    model = load_model(args.model, **extra)
    if args.recipe:
        from vitcompress.config import resolve_recipe
        from vitcompress.data import calibration_subset, load_dataset
        from vitcompress.models import input_spec_of
        from vitcompress.quantize import quantize_

        calib = calibration_subset(load_dataset(input_spec_of(model), "train", args.data_root), args.calib_size,
                                   seed=args.seed)
        quantize_(model, resolve_recipe(args.recipe), calib, batch_size=32)
    return model


def run_export(args: argparse.Namespace) -> int:
    """``vitcompress export``: write the ONNX file and print what was exported."""
    from vitcompress.export.onnx_export import check_export_args, export_onnx

    check_export_args(args.precision, args.opset, args.policy, Path(args.out))  # fail before loading / calibrating
    report = export_onnx(load_for_export(args), args.out, precision=args.precision, opset=args.opset,
                         policy=args.policy)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    d = report.to_dict()
    print(f"{args.out}: {report.precision}, opset {report.opset}, input {list(report.input_shape)} (batch dynamic), "
          f"{d['integer_points']} integer / {d['float_points']} float quantization points, {report.seconds:.1f} s")
    by_note: dict[str, list[str]] = {}
    for p in report.points:
        if p.note:
            by_note.setdefault(f"{p.note} ({'inexact' if not p.exact else 'exact'})", []).append(p.name)
    for note, names in by_note.items():
        print(f"  {len(names)} x {note}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """``vitcompress bench``: time torch FP32, ORT FP32 and ORT INT8; print the table or JSON."""
    from vitcompress.errors import ConfigError
    from vitcompress.export.bench import benchmark_deploy, format_bench

    if any(b < 1 for b in args.batch):
        raise ConfigError(f"batch sizes must be >= 1, got {args.batch}")
    if args.threads < 1:
        raise ConfigError(f"threads must be >= 1, got {args.threads}")
    if args.keep_onnx and not Path(args.keep_onnx).is_dir():
        raise ConfigError(f"keep-onnx: folder {args.keep_onnx} does not exist")
    result = benchmark_deploy(load_for_export(args), batches=tuple(args.batch), threads=args.threads,
                              warmup=args.warmup, repeats=args.repeats, rounds=args.rounds,
                              opt_level=args.opt_level, policy=args.policy, work_dir=args.keep_onnx)
    result["model"] = args.model
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0
