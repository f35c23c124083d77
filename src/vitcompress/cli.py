"""The ``vitcompress`` console script: thin; builds configs and calls the public verbs."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from vitcompress.errors import VitCompressError

DEMO_PRESETS = ("w8a8", "fqvit", "w6a6", "w4a8", "fqvit-w4a8", "w4a4", "fqvit-w4a4")
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str):
    def register(fn):
        COMMANDS[name] = fn
        return fn

    return register


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files "
                   "(default: /usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitcompress", description="Compress vision transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="evaluate the reference models (and compress them) on Fashion-MNIST")
    _add_common(p)
    p.add_argument("--limit", type=int, default=2000,
                   help="evaluate on the first N test images (default 2000; the benchmark uses all 10,000)")
    p.add_argument("--presets", nargs="+", default=list(DEMO_PRESETS), help="PTQ presets to run")
    p.add_argument("--calib-size", type=int, default=1000)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("eval", help="evaluate a model on the test set")
    _add_common(p)
    p.add_argument("--model", required=True, help="zoo name, timm:<name>, or a compressed-model folder")
    p.add_argument("--checkpoint", default=None, help="local weights for timm:<name> models")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "imagefolder"])
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("zoo", help="reference models: list, train")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    z = zsub.add_parser("list", help="list the reference models and their manifests")
    z.add_argument("--json", action="store_true")
    z = zsub.add_parser("train", help="train a reference model with its seeded recipe (resumable)")
    _add_common(z)
    z.add_argument("name", help="zoo model name")
    z.add_argument("--state-dir", default=None, help="resumable state (default: runs/zoo/NAME)")
    z.add_argument("--out-dir", default=None, help="where to write NAME.safetensors/.json (default: the zoo)")
    z.add_argument("--no-resume", action="store_true", help="start over even if a state exists")
    p = sub.add_parser("cost", help="MACs, BOPs and size of a model (optionally under a recipe)")
    p.add_argument("--model", required=True, help="zoo name or timm:<name>")
    p.add_argument("--recipe", default=None, help="preset name or YAML/JSON recipe (bits only; no calibration)")
    p.add_argument("--input-size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=None)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compress", help="compress a model with a recipe and write model, metrics, report")
    _add_common(p)
    p.add_argument("--model", required=True, help="zoo name (see `vitcompress zoo list`)")
    p.add_argument("--recipe", required=True, help="preset name or YAML/JSON recipe file")
    p.add_argument("--calib-size", type=int, default=1000, help="calibration images from the train split")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--evolq", action="store_true", help="refine the PTQ scales with Evol-Q (docs/evolq.md)")
    p.add_argument("--passes", type=int, default=None, help="Evol-Q passes over all blocks (default 10)")
    p.add_argument("--cycles", type=int, default=None, help="Evol-Q mutations per block and pass (default 3)")
    p.add_argument("--fitness", default=None, help="Evol-Q fitness: infonce (default), mse, cosine, kl")
    p.add_argument("--resume", action="store_true", help="continue an interrupted Evol-Q or GPUSQ run in --out")
    p.add_argument("--steps", type=int, default=None,
                   help="gpusq-int8/gpusq-int4: training steps per stage (default 300; docs/gpusq.md)")
    p = sub.add_parser("allocate", help="F-LBQ bit allocation: on a model end to end, or on distortion curves")
    from vitcompress.search.bitalloc.cli import add_arguments as add_allocate_arguments

    add_allocate_arguments(p)

    from vitcompress.search.mixaq.cli import add_eqbits_arguments, add_sample_arguments, add_search_arguments

    p = sub.add_parser("mixaq", help="MixA-Q tools: ratio sampling, equivalent activation bits, ratio search")
    msub = p.add_subparsers(dest="mixaq_command", required=True, metavar="ACTION")
    add_sample_arguments(msub.add_parser("sample", help="uniform-sum (or naive) ratio vectors"))
    add_eqbits_arguments(msub.add_parser("eqbits", help="equivalent activation bits (seed 000 eq. 3-5)"))
    add_search_arguments(msub.add_parser("search", help="NSGA-II search of ratio vectors (accuracy vs BOPs)"))
    from vitcompress.export.cli import add_bench_arguments, add_export_arguments

    add_export_arguments(sub.add_parser("export", help="export a model to ONNX (INT8 QDQ if quantized, else FP32)"))
    add_bench_arguments(sub.add_parser("bench", help="latency: torch FP32, ONNX Runtime FP32 and INT8, vs BOPs"))
    return parser


def _set_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)


@command("zoo")
def _zoo(args: argparse.Namespace) -> int:
    from vitcompress.models.zoo import ZOO

    if args.zoo_command == "list":
        from vitcompress.models.registry import read_manifest

        rows = []
        for name, entry in ZOO.items():
            m = read_manifest(name) if entry.manifest.is_file() else {}
            rows.append({"name": name, "description": entry.description, "params": m.get("params"),
                         "macs": m.get("macs"), "test_top1": m.get("test_top1")})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<14} top1={r['test_top1']}  params={r['params']}  macs={r['macs']}\n"
                      f"{'':<14} {r['description']}")
        return 0
    from vitcompress.models.train_zoo import train_zoo_model

    if args.name not in ZOO:
        raise VitCompressError(f"unknown zoo model {args.name!r}: known names are {sorted(ZOO)}")
    manifest = train_zoo_model(args.name, args.state_dir or f"runs/zoo/{args.name}", args.data_root,
                               args.out_dir, resume=not args.no_resume)
    print(json.dumps(manifest, indent=2))
    return 0


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.models import list_models
    from vitcompress.pipeline import CompressJob, run_compress

    rows = []
    for name in list_models():
        for preset in args.presets:
            job = CompressJob(model=name, recipe=resolve_recipe(preset), calib_size=args.calib_size,
                              data_root=args.data_root, eval_limit=args.limit)
            m = run_compress(job)
            rows.append(m)
            if not args.json:
                print(f"  {name} / {preset}: {m['q_top1']:.2f} % ({m['q_top1'] - m['fp_top1']:+.2f} pt)",
                      file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"\nPTQ on Fashion-MNIST ({rows[0]['eval_images']} test images, {args.calib_size} calibration images)")
    print(f"{'model':<13} {'recipe':<11} {'FP top-1':>8} {'Q top-1':>8} {'drop':>6} {'rel BOPs':>9} "
          f"{'size (KiB)':>11} {'PTQ s':>6}")
    for m in rows:
        print(f"{m['model']:<13} {m['recipe']:<11} {m['fp_top1']:>8.2f} {m['q_top1']:>8.2f} "
              f"{m['fp_top1'] - m['q_top1']:>6.2f} {m['rel_bops']:>9.4f} {m['size_bytes'] / 1024:>11.1f} "
              f"{m['ptq_seconds']:>6.1f}")
    return 0


@command("mixaq")
def _mixaq(args: argparse.Namespace) -> int:
    from vitcompress.search.mixaq.cli import run_eqbits, run_sample, run_search

    return {"sample": run_sample, "eqbits": run_eqbits, "search": run_search}[args.mixaq_command](args)


@command("allocate")
def _allocate(args: argparse.Namespace) -> int:
    if args.curves:
        from vitcompress.search.bitalloc.cli import run

        return run(args)
    from vitcompress.flbq import AllocateJob, run_allocate

    if not args.out:
        raise VitCompressError("--out DIR is required with --model (the output folder)")
    job = AllocateJob(model=args.model, budget=args.budget, unit=args.unit, solver=args.solver, bits=tuple(args.bits),
                      min_bits=args.min_bits, margin=args.margin, n_images=args.n_images, calib_size=args.calib_size,
                      act_bits=args.act_bits, head_bits=args.head_bits, target=args.target, exclude=tuple(args.exclude),
                      seed=args.seed,
                      data_root=args.data_root, eval_limit=args.limit)
    m = run_allocate(job, args.out)
    if args.json:
        print(json.dumps({k: v for k, v in m.items() if k != "layer_bits"}, indent=2))
    else:
        print(f"{args.model}: {m['avg_bits']:.3f} bits ({args.solver.upper()}, {m['units']} units), top-1 "
              f"{m['fp_top1']:.2f} -> {m['q_top1']:.2f} ({m['q_top1'] - m['fp_top1']:+.2f} pt), distortion "
              f"predicted {m['predicted_distortion']:.4g} / measured {m['measured_distortion']:.4g}, size "
              f"{m['fp_size_bytes']:,} -> {m['size_bytes']:,} bytes; outputs in {args.out}")
    return 0


@command("export")
def _export(args: argparse.Namespace) -> int:
    from vitcompress.export.cli import run_export

    return run_export(args)


@command("bench")
def _bench(args: argparse.Namespace) -> int:
    from vitcompress.export.cli import run_bench

    return run_bench(args)


def _model_kwargs(args: argparse.Namespace) -> dict:
    return {k: v for k, v in (("checkpoint", getattr(args, "checkpoint", None)),
                              ("num_classes", args.num_classes), ("in_chans", args.in_chans)) if v is not None}


@command("eval")
def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vitcompress.data import load_dataset
    from vitcompress.eval import evaluate
    from vitcompress.models import input_spec_of, load_model
    from vitcompress.quantize import restore

    if Path(args.model).is_dir():
        model = restore(Path(args.model) / "model" if (Path(args.model) / "model").is_dir() else args.model)
    else:
        model = load_model(args.model, **_model_kwargs(args))
    data = load_dataset(input_spec_of(model), "test", args.data_root, name=args.dataset)
    m = evaluate(model, data, batch_size=args.batch_size, limit=args.limit)
    if args.json:
        print(json.dumps({"model": args.model, **m.as_dict()}, indent=2))
    else:
        print(f"{args.model}: top-1 {m.top1:.2f} %  top-5 {m.top5:.2f} %  loss {m.loss:.4f}  "
              f"({m.images} images, {m.images_per_s:.0f} images/s)")
    return 0


@command("cost")
def _cost(args: argparse.Namespace) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.cost import cost, format_table
    from vitcompress.models import load_model
    from vitcompress.nn.convert import prepare, quantization_points

    extra = {"img_size": args.input_size} if args.input_size and args.model.startswith("timm:") else {}
    model = load_model(args.model, **_model_kwargs(args), **extra)
    if args.recipe:
        prepare(model, resolve_recipe(args.recipe))
        for _, qz in quantization_points(model):  # bits are all cost needs: no calibration
            qz.enabled = qz.spec.enabled
    report = cost(model, input_size=args.input_size)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_table(report))
    return 0


def _evolq_config(args: argparse.Namespace):
    """EvolQConfig from compress's flags (None without --evolq; Evol-Q flags alone are an error)."""
    flags = {k: getattr(args, k) for k in ("passes", "cycles", "fitness") if getattr(args, k) is not None}
    if not args.evolq:
        if flags or args.resume:
            raise VitCompressError(f"--{next(iter(flags), 'resume')} needs --evolq")
        return None
    from vitcompress.search.evolq import EvolQConfig
    from vitcompress.search.evolq.allocator import keep_freed_memory

    keep_freed_memory()  # this process owns its allocator: ~3x faster search (allocator.py)
    return EvolQConfig(calib_size=args.calib_size, seed=args.seed, **flags)


@command("compress")
def _compress(args: argparse.Namespace) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.pipeline import CompressJob, run_compress

    if args.recipe.startswith("gpusq"):
        return _compress_gpusq(args)
    if args.steps is not None:
        raise VitCompressError("--steps needs a training recipe (gpusq-int8, gpusq-int4)")
    job = CompressJob(model=args.model, recipe=resolve_recipe(args.recipe), calib_size=args.calib_size,
                      seed=args.seed, data_root=args.data_root, eval_limit=args.limit,
                      evolq=_evolq_config(args), evolq_resume=args.resume)
    m = run_compress(job, args.out)
    print(f"{args.model} / {job.recipe.name}: top-1 {m['fp_top1']:.2f} -> {m['q_top1']:.2f} "
          f"({m['q_top1'] - m['fp_top1']:+.2f} pt), rel. BOPs {m['rel_bops']:.4f}, size "
          f"{m['fp_size_bytes']:,} -> {m['size_bytes']:,} bytes; outputs in {args.out}")
    return 0


def _compress_gpusq(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vitcompress.gpusq import GPUSQJob, gpusq_preset, run_gpusq_job

    if args.evolq:
        raise VitCompressError("--evolq does not apply to the gpusq recipes (they train scales by QAT)")
    config = replace(gpusq_preset(args.recipe, **({"steps": args.steps} if args.steps else {})),
                     calib_size=args.calib_size)
    job = GPUSQJob(model=args.model, config=config, data_root=args.data_root, eval_limit=args.limit,
                   seed=args.seed, resume=args.resume)
    m = run_gpusq_job(job, args.out)
    print(f"{args.model} / {args.recipe}: top-1 {m['fp_top1']:.2f} -> sparse {m['sparse_float_top1']:.2f} -> "
          f"{m['q_top1']:.2f} ({m['q_top1'] - m['fp_top1']:+.2f} pt), size x{m['size_reduction']:.2f} smaller, "
          f"BOPs x{m['bops_reduction']:.1f} fewer; outputs in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _set_threads(args)
    try:
        return COMMANDS[args.command](args)
    except VitCompressError as e:
        print(f"vitcompress: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
