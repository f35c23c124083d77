"""The one job runner: model -> data -> float baseline -> the method's step -> evaluation, cost, outputs.

Every ``vitcompress compress <method>`` run, the demo and the benchmarks go through :func:`run_job`.
A method supplies only its step (its :func:`~vitcompress.compress_` handler) and its report section
(:attr:`Result.report`); loading, data, evaluation, cost, saving, ``metrics.json``, ``report.md`` and
the per-layer charts are done here once.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset, Subset

from vitcompress import distributed, outputs
from vitcompress.api import compress_
from vitcompress.cost import cost
from vitcompress.data.calib import first_images
from vitcompress.data.datasets import calibration_subset
from vitcompress.data.folder import verify_images
from vitcompress.data.source import DataSource
from vitcompress.device import describe, model_device, resolve_device
from vitcompress.errors import StateError, UnsupportedModelError
from vitcompress.eval.classification import Metrics
from vitcompress.eval.task import accuracy_metrics, detection_splits, evaluate_model, layer_report_inputs
from vitcompress.io import write_json, write_text
from vitcompress.methods.registry import method_for
from vitcompress.models.detection import is_detector
from vitcompress.models.source import ModelSource
from vitcompress.nn.convert import attention_summary, float_modules, quantization_points
from vitcompress.options import option
from vitcompress.quantize import recipe_of, save
from vitcompress.report.analysis import layer_stats
from vitcompress.report.charts import bar_chart
from vitcompress.report.markdown import compression_report
from vitcompress.result import Result
from vitcompress.validate import integer, positive_int

log = logging.getLogger(__name__)

DETECTOR_METHODS = ("ptq", "flbq", "mixaq", "gpusq")  # the methods that take a detector (vitcompress.models.detection)
REPORT_BATCH = 64  # calibration images the per-layer errors of the report are measured on


@dataclass(frozen=True)
class JobConfig:
    """What every compression job needs besides its method's config.

    Attributes:
        source: the model (see :class:`~vitcompress.models.source.ModelSource`).
        data: the images (see :class:`~vitcompress.data.source.DataSource`).
        out: output folder: model/, metrics.json, report.md, charts, and the method's resumable state
        calib_size: calibration images drawn from the training split (default: the method's own)
        seed: seed of the calibration subset and of every random draw of the method
        limit: evaluate on the first N test images only (default: all)
        resume: continue the interrupted search or training of --out (in OUT.partial, or the state a finished run
            left in OUT)
        overwrite: replace the earlier result in --out (and an unfinished run in OUT.partial)
        data_root: folder of the dataset (default: Debian's Fashion-MNIST).
        device: where the model is loaded and every stage runs (``auto|cpu|cuda|cuda:N``; the CLI's global
            ``--device``); the data is read on the CPU and moved batch by batch.
    """

    source: ModelSource
    data: DataSource = option(default_factory=DataSource)
    out: str | None = None
    calib_size: int | None = None
    seed: int = 0
    limit: int | None = None
    resume: bool = False
    overwrite: bool = False
    data_root: str | None = option(None, cli=False)
    device: str = option("auto", cli=False)

    def __post_init__(self) -> None:
        resolve_device(self.device)  # a bad name or absent CUDA: one line, before any work
        positive_int("calib_size", self.calib_size, optional=True)
        positive_int("limit", self.limit, optional=True)
        integer("seed", self.seed, minimum=0)


@dataclass
class JobData:
    """The data of one job: training split, seeded calibration subset, evaluation set (cut at ``limit``)."""

    train: Dataset
    calib: Subset
    test: Dataset
    train_augmented: Dataset | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)


@dataclass
class Baseline:
    """The float model's numbers (a job computes them; callers running many configs can pass them in)."""

    metrics: Metrics
    cost: Any
    extra: dict[str, Any] = field(default_factory=dict)


def load_data(job: JobConfig, model: nn.Module, calib_size: int, needs_train: bool = False) -> JobData:
    """The job's data, preprocessed for ``model`` (a detector's: the embedded scenes, see ``eval.task``)."""
    if is_detector(model):
        train, test, preprocess = detection_splits(model, job.data, job.data_root, needs_train)
        test = Subset(test, range(min(job.limit, len(test)))) if job.limit is not None else test
        calib = calibration_subset(train, calib_size, seed=job.seed)
        return JobData(train, calib, test, train if needs_train else None, preprocess)  # trained on the scenes
    train = job.data.train_set(model, job.data_root)
    test = job.data.eval_set(model, job.data_root)
    if job.limit is not None:
        test = Subset(test, range(min(job.limit, len(test))))
    augmented = job.data.train_set(model, job.data_root, augment=True, seed=job.seed) if needs_train else None
    calib = calibration_subset(train, calib_size, seed=job.seed)
    verify_images(calib)  # a bad calibration image fails here, before anything is written
    return JobData(train, calib, test, augmented, job.data.preprocess(model).as_dict())


def baseline_of(model: nn.Module, data: JobData) -> Baseline:
    """Accuracy and cost of the float model."""
    return Baseline(evaluate_model(model, data.test), cost(model))


def run_job(job: JobConfig, config: Any, baseline: Baseline | None = None) -> Result:
    """Load ``job.source``, compress it with ``config``'s method, evaluate, cost and (with ``job.out``) write.

    Writes ``model/`` (safetensors + recipe), ``metrics.json``, ``report.md``, ``bits_per_layer.png``,
    ``sqnr_per_layer.png`` and the method's own files into ``job.out``.

    Returns:
        The method's :class:`Result` with ``metrics`` holding the full ``metrics.json``.
    """
    t0 = time.perf_counter()
    method = method_for(config)
    out = Path(job.out) if job.out is not None else None
    distributed.init_from_env()  # under torchrun (nothing otherwise)
    main = distributed.is_main()  # only rank 0 touches the output folder
    if out is not None:
        distributed.main_decides(lambda: outputs.check_output_folder(out, overwrite=job.overwrite, resume=job.resume))
    model = job.source.load(job.device)
    if is_detector(model) and method.name not in DETECTOR_METHODS:
        raise UnsupportedModelError(
            f"{method.name} does not take detectors yet; methods that do: {list(DETECTOR_METHODS)} (docs/detection.md)"
        )
    if method.check is not None:
        method.check(model, config)
    if out is not None and main:
        outputs.check_free_space(out, output_bytes(model))
    calib_size = job.calib_size or getattr(config, "calib_size", None) or method.calib_size
    data = load_data(job, model, calib_size, method.needs_train_data)
    base = baseline or baseline_of(model, data)
    float_model = copy.deepcopy(model)
    # only now, the model, the data and the baseline being good, is anything written: into OUT.partial
    # (every rank gets rank 0's OUT.partial: the others read the state rank 0 sends them and write nothing)
    work = (
        distributed.main_decides(lambda: outputs.begin(out, overwrite=job.overwrite, resume=job.resume))
        if out is not None
        else None
    )
    result = compress_(
        model, config, data.calib, train_data=data.train_augmented, eval_data=data.test, state_dir=work,
        resume=job.resume,
    )  # fmt: skip
    q = evaluate_model(result.model, data.test)
    q_cost = result.cost if result.cost is not None else cost(result.model)
    common = common_metrics(job, method.name, result, base, q, q_cost, len(data.calib))
    result.metrics = {**common, "preprocess": data.preprocess, **result.metrics}
    result.metrics["seconds"] = time.perf_counter() - t0
    if out is not None and main:
        write_outputs(work, result, result.reference or float_model, data.calib)
        outputs.commit(work, out, {"writer": f"vitcompress compress {method.name}", "model": job.source.model})
    if out is not None:
        result.out = out
    distributed.barrier()
    return result


def output_bytes(model: nn.Module) -> int:
    """About what a job's folder needs on disk: the model twice (its folder, and the old one until the
    swap) plus room for the charts, reports and a method's state."""
    tensors = list(model.state_dict().values())
    return 2 * sum(t.numel() * t.element_size() for t in tensors) + (16 << 20)


def common_metrics(
    job: JobConfig, method: str, result: Result, base: Baseline, q: Metrics, q_cost: Any, calib_size: int
) -> dict[str, Any]:
    """The keys every ``metrics.json`` has (the method adds its own)."""
    fp, fp_cost = base.metrics, base.cost
    return {
        "model": job.source.model,
        "method": method,
        "recipe": _recipe_name(result),
        "seed": job.seed,
        **accuracy_metrics(fp, q),  # top-1/top-5/loss, or a detector's COCO box (and mask) mAP
        "macs": q_cost.macs,
        "bops": q_cost.bops,
        "fp_bops": fp_cost.bops,
        "rel_bops": q_cost.rel_bops,
        "bops_reduction": fp_cost.bops / max(1, q_cost.bops),
        "size_bytes": q_cost.size_bytes,
        "fp_size_bytes": fp_cost.size_bytes,
        "size_reduction": fp_cost.size_bytes / max(1, q_cost.size_bytes),
        "calib_size": calib_size,
        **describe(model_device(result.model)),
        **coverage(result.model),
    }


def coverage(model: nn.Module) -> dict[str, Any]:
    """What the compressed model quantizes: attention blocks with softmax and both matmuls quantized, and the
    modules left in float with the reason (empty for a model with no quantizer: nothing is claimed)."""
    if not any(True for _ in quantization_points(model)):
        return {}
    attention = attention_summary(model)
    return {
        "attention_modules": attention.attention_modules,
        "quantized_attention": attention.quantized_attention,
        "float_modules": [f.to_dict() for f in float_modules(model)],
    }


def _recipe_name(result: Result) -> str:
    name = getattr(result.config, "name", None)
    if isinstance(name, str):
        return name
    try:
        return recipe_of(result.model).name
    except StateError:  # a model the method did not quantize
        return result.method


def write_outputs(out: Path, result: Result, reference: nn.Module, calib: Dataset) -> None:
    """``model/``, per-layer charts, the method's files, ``report.md`` and ``metrics.json`` (written last)."""
    m = result.metrics
    if result.save_model:
        save(result.model, out / "model")
    layers, charts = [], []
    if result.layer_report:
        x = first_images(calib, REPORT_BATCH, device=model_device(result.model))
        layers = layer_stats(*layer_report_inputs(reference, result.model, x))
        charts = _layer_charts(out, layers, f"{m['model']} / {m['recipe']}")
        m["layers"] = [
            {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in r.__dict__.items()} for r in layers
        ]
    for name, obj in result.files.items():
        obj(out / name) if callable(obj) else write_json(out / name, obj)
        if name.endswith(".png") and name not in charts:
            charts.append(name)
    section = result.report(m) if callable(result.report) else result.report
    write_text(out / "report.md", compression_report(m, layers, charts) + section)
    write_json(out / "metrics.json", m)
    m.pop("layers", None)


def _layer_charts(out: Path, layers: list, title: str) -> list[str]:
    labels = [r.name for r in layers]
    bar_chart(
        out / "bits_per_layer.png",
        labels,
        {"weight": [r.w_bits for r in layers], "input": [float(r.a_bits) for r in layers]},
        "bits",
        f"{title}: bits per layer",
    )
    bar_chart(
        out / "sqnr_per_layer.png",
        labels,
        {
            "output SQNR": [min(r.output_sqnr_db, 99.0) for r in layers],
            "weight SQNR": [min(r.weight_sqnr_db, 99.0) for r in layers],
        },
        "dB",
        f"{title}: SQNR per layer (capped at 99 dB)",
    )
    return ["bits_per_layer.png", "sqnr_per_layer.png"]
