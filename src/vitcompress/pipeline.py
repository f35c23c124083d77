"""Running a compression job end to end: load, calibrate, quantize, evaluate, cost, save, report.

This is the one place that sees every layer of the toolkit; the CLI calls it.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vitcompress.config import Recipe
from vitcompress.cost import cost
from vitcompress.data.datasets import calibration_subset, load_dataset, make_loader
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json, write_text
from vitcompress.models.registry import input_spec_of, load_model
from vitcompress.quantize import quantize_, save
from vitcompress.report.analysis import layer_stats
from vitcompress.report.charts import bar_chart
from vitcompress.report.markdown import compression_report
from vitcompress.search.evolq import EvolQConfig, evolq_

log = logging.getLogger(__name__)
_FP_METRICS: dict[tuple, object] = {}


@dataclass(frozen=True)
class CompressJob:
    """What to compress and how (the CLI's ``compress`` arguments)."""

    model: str
    recipe: Recipe
    calib_size: int = 1000
    calib_batch_size: int = 64
    seed: int = 0
    data_root: str | None = None
    eval_limit: int | None = None
    progress: bool = True
    evolq: EvolQConfig | None = None  # Evol-Q refinement after PTQ (state in OUT/evolq_state.pt)
    evolq_resume: bool = False


def run_compress(job: CompressJob, out_dir: str | Path | None = None) -> dict:
    """Compress ``job.model`` with ``job.recipe``; write outputs to ``out_dir`` if given.

    Writes ``model/`` (safetensors + recipe), ``metrics.json``, ``report.md``, ``bits_per_layer.png``
    and ``sqnr_per_layer.png``. Returns the metrics dict.
    """
    t0 = time.perf_counter()
    model = load_model(job.model)
    spec = input_spec_of(model)
    test = load_dataset(spec, "test", job.data_root)
    calib = calibration_subset(load_dataset(spec, "train", job.data_root), job.calib_size, seed=job.seed)
    key = (job.model, job.data_root, job.eval_limit)
    if key not in _FP_METRICS:  # evaluation is deterministic: the float model's numbers are reused
        _FP_METRICS[key] = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    fp = _FP_METRICS[key]
    fp_cost = cost(model)
    float_model = copy.deepcopy(model)
    t_q = time.perf_counter()
    quantize_(model, job.recipe, calib, batch_size=job.calib_batch_size, progress=job.progress)
    ptq_seconds = time.perf_counter() - t_q
    q = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    evolq_metrics = {}
    if job.evolq is not None:  # q_top1 is then Evol-Q's; ptq_top1 keeps the PTQ number
        evolq_metrics = {"ptq_top1": q.top1, **_run_evolq(job, model, calib, test, out_dir)}
        q = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    q_cost = cost(model)
    metrics = {
        "model": job.model, "recipe": job.recipe.name, "seed": job.seed,
        "fp_top1": fp.top1, "q_top1": q.top1, "fp_top5": fp.top5, "q_top5": q.top5,
        "fp_loss": fp.loss, "q_loss": q.loss, "eval_images": q.images,
        "macs": q_cost.macs, "bops": q_cost.bops, "fp_bops": fp_cost.bops, "rel_bops": q_cost.rel_bops,
        "size_bytes": q_cost.size_bytes, "fp_size_bytes": fp_cost.size_bytes,
        "calib_size": job.calib_size, "ptq_seconds": ptq_seconds, **evolq_metrics,
    }
    if out_dir is not None:
        batch = next(iter(make_loader(calib, job.calib_batch_size)))[0]
        _write_outputs(Path(out_dir), model, float_model, batch, metrics, t0)
    metrics["seconds"] = time.perf_counter() - t0
    return metrics


def _run_evolq(job: CompressJob, model: torch.nn.Module, calib, test, out_dir: str | Path | None) -> dict:
    """Evol-Q on the PTQ model (same calibration subset, its first ``calib_size`` images); the test
    top-1 is logged after every pass but never used for selection."""
    state = None
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        state = Path(out_dir) / "evolq_state.pt"
    evolq_calib = calib
    if job.evolq.calib_size > job.calib_size:
        evolq_calib = calibration_subset(calib.dataset, job.evolq.calib_size, seed=job.seed)
    result = evolq_(model, evolq_calib, job.evolq, eval_data=test, eval_limit=job.eval_limit, state_path=state,
                    resume=job.evolq_resume, progress=job.progress)
    return {"evolq": result.to_dict(), "evolq_seconds": result.seconds}


def _write_outputs(out: Path, model: torch.nn.Module, float_model: torch.nn.Module, batch: torch.Tensor,
                   metrics: dict, t0: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save(model, out / "model")
    layers = layer_stats(float_model, model, batch)
    labels = [r.name for r in layers]
    bar_chart(out / "bits_per_layer.png", labels, {"weight": [r.w_bits for r in layers],
                                                   "input": [float(r.a_bits) for r in layers]},
              "bits", f"{metrics['model']} / {metrics['recipe']}: bits per layer")
    finite = [min(r.output_sqnr_db, 99.0) for r in layers]
    bar_chart(out / "sqnr_per_layer.png", labels, {"output SQNR": finite,
                                                   "weight SQNR": [min(r.weight_sqnr_db, 99.0) for r in layers]},
              "dB", f"{metrics['model']} / {metrics['recipe']}: SQNR per layer (capped at 99 dB)")
    metrics["seconds"] = time.perf_counter() - t0
    metrics["layers"] = [{k: None if isinstance(v, float) and math.isinf(v) else v for k, v in r.__dict__.items()}
                         for r in layers]
    write_text(out / "report.md", compression_report(metrics, layers, ["bits_per_layer.png", "sqnr_per_layer.png"]))
    write_json(out / "metrics.json", {k: v for k, v in metrics.items()})
    metrics.pop("layers")
