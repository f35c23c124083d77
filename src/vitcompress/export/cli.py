"""``vitcompress export`` and ``vitcompress bench``: their options and what they run.

``--model`` is a folder written by ``vitcompress compress`` (or ``vitcompress.save``), which is
restored quantized, or a model name (zoo name or ``timm:<name>``), which is loaded float and, with
``--recipe``, quantized on ``--calib-size`` training images (fitted to the model's input size).
``bench`` needs a quantized model, so a name without ``--recipe`` uses ``w8a8``. ``--input-size``
(the images' option) also sets the exported and timed input of a model that does not say its own size.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from vitcompress.data.source import DataSource
from vitcompress.errors import ConfigError
from vitcompress.models.source import ModelSource
from vitcompress.options import option
from vitcompress.validate import integer, positive_int

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "fp32")  # as vitcompress.export.onnx_export
POLICIES = ("promote", "float", "error")
OPT_LEVELS = ("disable", "basic", "extended", "all")
RUNTIMES = ("ort", "openvino", "all")  # as vitcompress.export.bench.RUNTIME_CHOICES


@dataclass(frozen=True)
class QuantizeFirst:
    """How a model given by name is quantized before export or timing.

    Attributes:
        recipe: with a model name: quantize with this preset or YAML/JSON recipe first (none: export it float)
        calib_size: calibration images from the training split
        seed: seed of the calibration subset
        policy: points ONNX Runtime cannot run at their bits (activations below 8 bit, log2): promote to 8
            bit, keep float, or error
    """

    recipe: str | None = None
    calib_size: int = 256
    seed: int = 0
    policy: str = option("promote", choices=POLICIES)

    def __post_init__(self) -> None:
        positive_int("calib_size", self.calib_size)
        integer("seed", self.seed, minimum=0)


@dataclass(frozen=True, kw_only=True)
class ExportOptions(QuantizeFirst):
    """``vitcompress export``.

    Attributes:
        out: the .onnx file to write (its folder must exist)
        precision: int8: QDQ graph (quantized model); fp32: float graph; auto: int8 if quantized
        opset: ONNX opset, 13..20
        runtime: the INT8 graph's layout: all: one both runtimes run fully as INT8 (OpenVINO's fastest);
            ort: ONNX Runtime's fastest (OpenVINO then runs the attention matmuls in float)
        json: print JSON
    """

    out: str = option(help="the .onnx file to write (its folder must exist)")
    precision: str = option("auto", choices=PRECISIONS)
    opset: int = 17
    runtime: str = option("all", choices=RUNTIMES)
    json: bool = False


@dataclass(frozen=True, kw_only=True)
class BenchOptions(QuantizeFirst):
    """``vitcompress bench`` (threads: the global ``--threads``, default 1 here).

    Attributes:
        recipe: with a model name: quantize with this preset or YAML/JSON recipe first
        runtime: ort: ONNX Runtime; openvino: OpenVINO (CPU plugin, FP32, its default bf16 where the CPU
            has it, and INT8); all: every installed runtime
        batch: batch sizes
        warmup: untimed runs per engine and batch
        repeats: timed runs per engine and batch
        rounds: alternate the engines this many times
        opt_level: ONNX Runtime graph optimization level
        keep_onnx: write the two ONNX files to this folder (default: a temporary one)
        json: print JSON
    """

    recipe: str | None = "w8a8"
    runtime: str = option("all", choices=RUNTIMES)
    batch: tuple[int, ...] = (1, 8)
    warmup: int = 5
    repeats: int = 30
    rounds: int = 3
    opt_level: str = option("all", choices=OPT_LEVELS)
    keep_onnx: str | None = None
    json: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.batch or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batch):
            raise ConfigError(f"batch sizes must be integers >= 1, got {list(self.batch)}")
        for name in ("warmup", "repeats", "rounds"):
            integer(name, getattr(self, name), minimum=0 if name == "warmup" else 1)
        if self.keep_onnx and not Path(self.keep_onnx).is_dir():
            raise ConfigError(f"keep-onnx: folder {self.keep_onnx} does not exist")
        if self.runtime == "openvino":
            from vitcompress.export.openvino import require_openvino

            require_openvino()  # fail before loading and calibrating


def load_for_export(
    source: ModelSource,
    opts: QuantizeFirst,
    images: DataSource | None = None,
    data_root: str | None = None,
    device: str | None = None,
) -> nn.Module:
    """The model ``source`` names, on ``device``: restored quantized from a folder, or loaded (and quantized with
    ``opts.recipe``, the calibration running on ``device``)."""
    model = source.load(device)
    if source.folder is None and opts.recipe:
        from vitcompress.config import resolve_recipe
        from vitcompress.data import calibration_subset
        from vitcompress.quantize import quantize_

        recipe = resolve_recipe(opts.recipe)
        train = (images or DataSource()).train_set(model, data_root)
        calib = calibration_subset(train, opts.calib_size, seed=opts.seed)
        quantize_(model, recipe, calib, batch_size=32)
    return model


def run_export(
    source: ModelSource,
    opts: ExportOptions,
    images: DataSource | None = None,
    data_root: str | None = None,
    device: str | None = None,
) -> int:
    """``vitcompress export``: write the ONNX file and print what was exported (a model quantized on ``device``
    is traced from a CPU copy)."""
    from vitcompress.export.convert import Layout
    from vitcompress.export.onnx_export import check_export_args, export_onnx

    check_export_args(opts.precision, opts.opset, opts.policy, Path(opts.out))  # fail before loading / calibrating
    report = export_onnx(
        load_for_export(source, opts, images, data_root, device),
        opts.out,
        precision=opts.precision,
        opset=opts.opset,
        policy=opts.policy,
        layout=Layout.for_runtime(opts.runtime),
        input_size=images.input_size if images is not None else None,
    )
    if opts.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    d = report.to_dict()
    print(
        f"{opts.out}: {report.precision}, opset {report.opset}, input {list(report.input_shape)} (batch dynamic), "
        f"{d['integer_points']} integer / {d['float_points']} float quantization points, "
        f"{len(report.float_modules)} float modules, {report.seconds:.1f} s"
        + (f" (traced from a CPU copy of the {report.model_device} model)" if report.model_device != "cpu" else "")
    )
    for m in report.float_modules:
        print(f"  float: {m['name'] or '<model>'} ({m['type']}): {m['why']}")
    by_note: dict[str, list[str]] = {}
    for p in report.points:
        if p.note:
            by_note.setdefault(f"{p.note} ({'inexact' if not p.exact else 'exact'})", []).append(p.name)
    for note, names in by_note.items():
        print(f"  {len(names)} x {note}: {', '.join(names[:3])}{' …' if len(names) > 3 else ''}")
    return 0


def run_bench(
    source: ModelSource,
    opts: BenchOptions,
    images: DataSource | None = None,
    threads: int | None = None,
    data_root: str | None = None,
    device: str | None = None,
) -> int:
    """``vitcompress bench``: time torch FP32 (on ``device``) and each runtime's FP32 and INT8 (on the CPU); print
    the table or JSON."""
    from vitcompress.export.bench import benchmark_deploy, format_bench

    result = benchmark_deploy(
        load_for_export(source, opts, images, data_root, device),
        batches=tuple(opts.batch),
        threads=threads or 1,
        warmup=opts.warmup,
        repeats=opts.repeats,
        rounds=opts.rounds,
        opt_level=opts.opt_level,
        policy=opts.policy,
        work_dir=opts.keep_onnx,
        runtime=opts.runtime,
        input_size=images.input_size if images is not None else None,
    )
    result["model"] = source.model
    print(json.dumps(result, indent=2) if opts.json else format_bench(result))
    return 0
