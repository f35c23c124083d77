"""The ``vitcompress`` console script: composes the commands that the config dataclasses declare.

Every option is a field of a frozen dataclass (name, type, default and help in one place; see
:mod:`vitcompress.options`). Global options (``-v``, ``--threads``, ``--device``, ``--data-root``,
``--progress``) work before or after the command name; ``--model``, ``--out``, ``--seed``, ``--calib-size`` and
``--limit`` mean the same on every command that takes them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vitcompress.errors import ConfigError, VitCompressError
from vitcompress.options import MethodCommand, add_options, from_args, option
from vitcompress.validate import positive_int

# the modules whose COMMAND is a `compress` sub-command, in the order `--help` lists them
METHOD_CLI_MODULES = (
    "vitcompress.methods.ptq",
    "vitcompress.methods.evolq.cli",
    "vitcompress.methods.flbq.cli",
    "vitcompress.methods.gpusq.cli",
    "vitcompress.methods.mixaq.cli",
)
DEMO_PRESETS = ("w8a8", "fqvit", "w6a6", "w4a8", "fqvit-w4a8", "w4a4", "fqvit-w4a4")


@dataclass(frozen=True)
class GlobalOptions:
    """Options of every command, before or after its name.

    Attributes:
        verbose: debug logging
        threads: torch CPU threads (default: torch's choice; bench: 1)
        device: where the model is loaded and the work runs: auto (CUDA when present), cpu, cuda or cuda:N
            (export traces a CPU copy; bench times ONNX Runtime and OpenVINO on the CPU, torch on this device)
        data_root: dataset folder (default: /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist)
        progress: progress bars on stderr
    """

    verbose: bool = option(False, flag="-v|--verbose", help="debug logging")
    threads: int | None = None
    device: str = "auto"
    data_root: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        from vitcompress.device import resolve_device

        positive_int("threads", self.threads, optional=True)
        resolve_device(self.device)  # a bad name or absent CUDA: one line, before any model loads


@dataclass(frozen=True)
class DemoOptions:
    """``vitcompress demo``.

    Attributes:
        limit: evaluate on the first N test images (the benchmark uses all 10,000)
        presets: PTQ presets to run
        calib_size: calibration images from the training split
        json: print JSON instead of a table
    """

    limit: int = 2000
    presets: tuple[str, ...] = DEMO_PRESETS
    calib_size: int = 1000
    json: bool = False

    def __post_init__(self) -> None:
        positive_int("limit", self.limit)
        positive_int("calib_size", self.calib_size)


@dataclass(frozen=True)
class EvalOptions:
    """``vitcompress eval``.

    Attributes:
        limit: evaluate on the first N test images only
        batch_size: images per batch
        json: print JSON
    """

    limit: int | None = None
    batch_size: int = 256
    json: bool = False

    def __post_init__(self) -> None:
        positive_int("limit", self.limit, optional=True)
        positive_int("batch_size", self.batch_size)


@dataclass(frozen=True)
class CostOptions:
    """``vitcompress cost``.

    Attributes:
        recipe: preset name or YAML/JSON recipe (bits only; no calibration)
        input_size: image size (default: the model's)
        json: print JSON
    """

    recipe: str | None = None
    input_size: int | None = None
    json: bool = False


@dataclass(frozen=True)
class InspectOptions:
    """``vitcompress inspect``.

    Attributes:
        recipe: preset name or YAML/JSON recipe
        input_size: image size for the MAC count (default: the model's)
        json: print JSON
    """

    recipe: str = "w8a8"
    input_size: int | None = None
    json: bool = False

    def __post_init__(self) -> None:
        positive_int("input_size", self.input_size, optional=True)


@dataclass(frozen=True)
class ZooListOptions:
    """``vitcompress zoo list``.

    Attributes:
        json: print JSON
    """

    json: bool = False


@dataclass(frozen=True)
class ZooTrainOptions:
    """``vitcompress zoo train``.

    Attributes:
        name: zoo model name
        state_dir: resumable training state (default: runs/zoo/NAME)
        out_dir: where NAME.safetensors/.json are written (default: the zoo)
        resume: continue from the state in --state-dir when there is one
        max_steps: a detector only: stop after this global step of its recipe (checkpoint + STATE_DIR/model-stepN
            to evaluate; run again without it to continue)
    """

    name: str = option(flag="name")
    state_dir: str | None = None
    out_dir: str | None = None
    resume: bool = True
    max_steps: int | None = None

    def __post_init__(self) -> None:
        positive_int("max_steps", self.max_steps, optional=True)


def method_commands() -> dict[str, MethodCommand]:
    """``compress`` sub-command name -> its MethodCommand."""
    commands = [importlib.import_module(m).COMMAND for m in METHOD_CLI_MODULES]
    return {c.name: c for c in commands}


def _parser(sub, name: str, help_text: str, run: Callable, *option_classes: type) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    for cls in option_classes:
        add_options(p, cls)
    add_options(p.add_argument_group("global options"), GlobalOptions, suppress=True)
    p.set_defaults(run=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    from vitcompress.data.scenes.config import SceneBuildOptions, SceneConfig
    from vitcompress.data.source import DataSource
    from vitcompress.export.cli import BenchOptions, ExportOptions
    from vitcompress.jobs import JobConfig
    from vitcompress.methods.flbq.cli import add_arguments as add_allocate_arguments
    from vitcompress.methods.mixaq.cli import add_eqbits_arguments, add_sample_arguments
    from vitcompress.models.source import ModelSource

    parser = argparse.ArgumentParser(prog="vitcompress", description="Compress vision transformers.")
    add_options(parser, GlobalOptions)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _parser(sub, "demo", "PTQ presets on both reference models, comparison table", _demo, DemoOptions)
    _parser(sub, "eval", "evaluate a model on the test set", _eval, ModelSource, DataSource, EvalOptions)
    _parser(sub, "cost", "MACs, BOPs and size of a model (optionally under a recipe)", _cost, ModelSource, CostOptions)
    _parser(
        sub,
        "inspect",
        "what a recipe will quantize in a model (points, float modules, attention), before any data",
        _inspect,
        ModelSource,
        InspectOptions,
    )
    zoo = sub.add_parser("zoo", help="reference models: list, train").add_subparsers(
        dest="zoo_command", required=True, metavar="ACTION"
    )
    _parser(zoo, "list", "list the reference models and their manifests", _zoo_list, ZooListOptions)
    _parser(zoo, "train", "train a reference model with its seeded recipe (resumable)", _zoo_train, ZooTrainOptions)
    scenes = sub.add_parser("scenes", help="the embedded detection scenes: build").add_subparsers(
        dest="scenes_command", required=True, metavar="ACTION"
    )
    _parser(
        scenes,
        "build",
        "build the detection scenes from Fashion-MNIST into the cache (COCO JSON, deterministic)",
        _scenes_build,
        SceneConfig,
        SceneBuildOptions,
    )
    methods = sub.add_parser(
        "compress",
        help="compress a model with one method; write model, metrics, report",
        description="compress a model with one method; write model, metrics, report",
    )
    msub = methods.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name, command in method_commands().items():
        p = _parser(msub, name, command.help, _compress, JobConfig)
        add_options(p.add_argument_group(f"{name} options"), command.options, skip=("seed", "calib_size"))
        p.add_argument("--json", action="store_true", help="print metrics.json instead of a summary line")
    p = _parser(sub, "allocate", "F-LBQ solver alone, on a distortion-curves file", _allocate)
    add_allocate_arguments(p)
    mixaq = sub.add_parser("mixaq", help="MixA-Q tools: ratio sampling, equivalent activation bits")
    mtools = mixaq.add_subparsers(dest="mixaq_command", required=True, metavar="ACTION")
    add_sample_arguments(_parser(mtools, "sample", "uniform-sum (or naive) ratio vectors", _mixaq_sample))
    add_eqbits_arguments(_parser(mtools, "eqbits", "equivalent activation bits", _mixaq_eqbits))
    _parser(
        sub,
        "export",
        "export a model to ONNX (INT8 QDQ if quantized, else FP32)",
        _export,
        ModelSource,
        DataSource,
        ExportOptions,
    )
    _parser(
        sub,
        "bench",
        "latency: torch FP32, ONNX Runtime FP32 and INT8, vs BOPs",
        _bench,
        ModelSource,
        DataSource,
        BenchOptions,
    )
    return parser


# ---- the commands: each takes the parsed arguments and the global options, returns the exit status ----------
def _zoo_list(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.models.registry import read_manifest
    from vitcompress.models.zoo import ZOO

    rows = []
    for name, entry in ZOO.items():
        m = read_manifest(name) if entry.manifest.is_file() else {}
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "params": m.get("params"),
                "macs": m.get("macs"),
                "test_top1": m.get("test_top1"),
            }
        )
    rows += _zoo_detector_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        score = f"top1={r['test_top1']}" if "test_top1" in r else f"bbox_map={r['bbox_map']}"
        if not r.get("trained", True):
            score = f"not trained: {r['train_command']}"
        print(f"{r['name']:<15} {score}  params={r['params']}  macs={r['macs']}\n{'':<15} {r['description']}")
    return 0


def _zoo_detector_rows() -> list[dict]:
    """``zoo list`` rows of the reference detectors: trained (their manifest's box mAP) or not."""
    from vitcompress.models.zoo import DETECTOR_ZOO

    rows = []
    for name, entry in DETECTOR_ZOO.items():
        trained = entry.manifest.is_file() and entry.folder.is_dir()
        m = json.loads(entry.manifest.read_text()) if trained else {}
        rows.append(
            {
                "name": name,
                "description": entry.description,
                "trained": trained,
                "train_command": entry.train_command,
                "params": m.get("params"),
                "macs": m.get("macs"),
                "bbox_map": m.get("bbox_map"),
            }
        )
    return rows


def _zoo_train(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.models.zoo import DETECTOR_ZOO, ZOO, zoo_names
    from vitcompress.train.zoo import train_zoo_model

    opts = from_args(ZooTrainOptions, args)
    if opts.name in DETECTOR_ZOO:  # the scenes' reference detectors (vitcompress.train.detection's recipe)
        from vitcompress.train.zoo import train_zoo_detector

        state = opts.state_dir or f"runs/zoo/{opts.name}"
        if not opts.resume and Path(state).exists():
            raise ConfigError(f"resume: --no-resume with an existing state folder {state}: pass another --state-dir")
        print(json.dumps(train_zoo_detector(opts.name, state, g.data_root, opts.out_dir, g.device, opts.max_steps)))
        return 0
    if opts.name not in ZOO:
        raise ConfigError(f"name must be one of {zoo_names()}, got {opts.name!r}")
    if opts.max_steps is not None:
        raise ConfigError(f"max_steps: only for the reference detectors {sorted(DETECTOR_ZOO)}")
    manifest = train_zoo_model(
        opts.name,
        opts.state_dir or f"runs/zoo/{opts.name}",
        g.data_root,
        opts.out_dir,
        resume=opts.resume,
        device=g.device,
    )
    print(json.dumps(manifest, indent=2))
    return 0


def _scenes_build(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.data.scenes import SceneBuildOptions, SceneConfig, build_scenes

    config, opts = from_args(SceneConfig, args), from_args(SceneBuildOptions, args)
    print(build_scenes(config, cache_dir=opts.cache_dir, data_root=g.data_root, overwrite=opts.overwrite))
    return 0


def _demo(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.jobs import JobConfig, run_job
    from vitcompress.models import list_models
    from vitcompress.models.source import ModelSource

    opts = from_args(DemoOptions, args)
    recipes = [resolve_recipe(p) for p in opts.presets]  # every name checked before any work
    rows = []
    for name in list_models():
        job = JobConfig(
            ModelSource(name), calib_size=opts.calib_size, limit=opts.limit, data_root=g.data_root, device=g.device
        )
        for recipe in recipes:
            m = run_job(job, recipe).metrics
            rows.append(m)
            if not opts.json:
                print(
                    f"  {name} / {recipe.name}: {m['q_top1']:.2f} % ({m['q_top1'] - m['fp_top1']:+.2f} pt)",
                    file=sys.stderr,
                )
    if opts.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"\nPTQ on Fashion-MNIST ({rows[0]['eval_images']} test images, {opts.calib_size} calibration images)")
    print(
        f"{'model':<13} {'recipe':<11} {'FP top-1':>8} {'Q top-1':>8} {'drop':>6} {'rel BOPs':>9} "
        f"{'size (KiB)':>11} {'PTQ s':>6}"
    )
    for m in rows:
        print(
            f"{m['model']:<13} {m['recipe']:<11} {m['fp_top1']:>8.2f} {m['q_top1']:>8.2f} "
            f"{m['fp_top1'] - m['q_top1']:>6.2f} {m['rel_bops']:>9.4f} {m['size_bytes'] / 1024:>11.1f} "
            f"{m['ptq_seconds']:>6.1f}"
        )
    return 0


def _eval(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.data.source import DataSource
    from vitcompress.eval import evaluate
    from vitcompress.models.detection import is_detector
    from vitcompress.models.source import ModelSource

    source, images, opts = from_args(ModelSource, args), from_args(DataSource, args), from_args(EvalOptions, args)
    model = source.load(g.device)
    if is_detector(model):  # COCO mAP on the scenes' val split
        return _eval_detector(source.model, model, images, opts, g)
    data = images.eval_set(model, g.data_root)
    m = evaluate(model, data, batch_size=opts.batch_size, limit=opts.limit)
    if opts.json:
        print(json.dumps({"model": source.model, **m.as_dict()}, indent=2))
    else:
        print(
            f"{source.model}: top-1 {m.top1:.2f} %  top-5 {m.top5:.2f} %  loss {m.loss:.4f}  "
            f"({m.images} images, {m.images_per_s:.0f} images/s)"
        )
    return 0


def _eval_detector(name: str, model, images, opts: EvalOptions, g: GlobalOptions) -> int:
    from vitcompress.eval.task import detection_splits, evaluate_model

    _, val, _ = detection_splits(model, images, g.data_root)
    m = evaluate_model(model, val, batch_size=opts.batch_size, limit=opts.limit)  # batches capped for detectors
    if opts.json:
        print(json.dumps({"model": name, **m.as_dict()}, indent=2))
        return 0
    masks = f"  mask mAP {m.segm_map:.2f}" if m.segm_map is not None else ""
    print(
        f"{name}: box mAP {m.bbox_map:.2f}  mAP@.5 {m.bbox_map50:.2f}{masks}  "
        f"({m.images} images, {m.images_per_s:.1f} images/s)"
    )
    return 0


def _cost(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.cost import cost, format_table
    from vitcompress.models.inputs import zero_image
    from vitcompress.models.source import ModelSource
    from vitcompress.nn.convert import prepare, quantization_points

    source, opts = from_args(ModelSource, args), from_args(CostOptions, args)
    model = source.load(g.device)
    if opts.recipe:
        prepare(model, resolve_recipe(opts.recipe), zero_image(model, opts.input_size))
        for _, qz in quantization_points(model):  # bits are all cost needs: no calibration
            qz.enabled = qz.spec.enabled
    report = cost(model, input_size=opts.input_size)
    print(json.dumps(report.to_dict(), indent=2) if opts.json else format_table(report))
    return 0


def _inspect(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.config import resolve_recipe
    from vitcompress.inspection import format_inspection, inspect_model
    from vitcompress.models.source import ModelSource

    source, opts = from_args(ModelSource, args), from_args(InspectOptions, args)
    recipe = resolve_recipe(opts.recipe)  # checked before the model loads
    found = inspect_model(source.load(g.device), recipe, input_size=opts.input_size)
    print(json.dumps({"model": source.model, **found.to_dict()}, indent=2) if opts.json else format_inspection(found))
    return 0


def _compress(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.jobs import JobConfig, run_job

    command = method_commands()[args.method]
    job = from_args(JobConfig, args, data_root=g.data_root, device=g.device)
    if job.out is None:
        raise ConfigError("out: --out DIR is required (the output folder)")
    config = command.config(args, {"seed": job.seed, "calib_size": job.calib_size})
    result = run_job(job, config)
    m = result.metrics
    if args.json:
        print(json.dumps(m, indent=2, default=str))
    elif command.summary is not None:
        print(command.summary(result))
    else:
        print(summary_line(m, job.out))
    return 0


def summary_line(m: dict, out: str) -> str:
    """The line ``compress`` prints by default: accuracy, BOPs and size before and after."""
    from vitcompress.eval.task import headline

    what, fp, q = headline(m)  # top-1, or a detector's box mAP
    return (
        f"{m['model']} / {m['method']} {m['recipe']}: {what} {fp:.2f} -> {q:.2f} "
        f"({q - fp:+.2f} pt), rel. BOPs {m['rel_bops']:.4f}, size {m['fp_size_bytes']:,} -> "
        f"{m['size_bytes']:,} bytes; outputs in {out}"
    )


def _allocate(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.methods.flbq.cli import run

    return run(args)


def _mixaq_sample(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.methods.mixaq.cli import run_sample

    return run_sample(args)


def _mixaq_eqbits(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.methods.mixaq.cli import run_eqbits

    return run_eqbits(args)


def _export(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.data.source import DataSource
    from vitcompress.export.cli import ExportOptions, run_export
    from vitcompress.models.source import ModelSource

    images = from_args(DataSource, args)
    return run_export(from_args(ModelSource, args), from_args(ExportOptions, args), images, g.data_root, g.device)


def _bench(args: argparse.Namespace, g: GlobalOptions) -> int:
    from vitcompress.data.source import DataSource
    from vitcompress.export.cli import BenchOptions, run_bench
    from vitcompress.models.source import ModelSource

    images = from_args(DataSource, args)
    opts = from_args(BenchOptions, args)
    return run_bench(from_args(ModelSource, args), opts, images, g.threads, g.data_root, g.device)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; errors are one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    if "--no-progress" in argv:  # tqdm reads TQDM_DISABLE when it is imported (torch imports it): set it first
        os.environ["TQDM_DISABLE"] = "1"
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 shows progress
        os.environ["TQDM_DISABLE"] = "1"
    args = build_parser().parse_args(argv)
    try:
        g = from_args(GlobalOptions, args)
        logging.basicConfig(
            level=logging.DEBUG if g.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        if g.threads is not None:
            import torch

            torch.set_num_threads(g.threads)
        from vitcompress import distributed

        distributed.init_from_env()  # under torchrun: join the group first, so `cuda` is this rank's own GPU
        quiet = contextlib.nullcontext() if distributed.is_main() else contextlib.redirect_stdout(io.StringIO())
        if not distributed.is_main():  # the other ranks do their share and stay silent: rank 0 logs and prints
            logging.getLogger().setLevel(logging.WARNING)
        try:
            with quiet:
                return args.run(args, g)
        finally:
            distributed.shutdown()
    except VitCompressError as e:
        message = " ".join(str(e).split())  # one line, whatever a wrapped library put in the message
        print(f"vitcompress: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
