"""GPUSQ-ViT as a method of :func:`vitcompress.compress_`: the handler and its report section."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from vitcompress.cost import cost
from vitcompress.errors import ConfigError
from vitcompress.eval.task import evaluate_model
from vitcompress.methods.gpusq.algorithm import gpusq_
from vitcompress.methods.gpusq.config import GPUSQConfig
from vitcompress.methods.registry import register
from vitcompress.models.detection import is_detector
from vitcompress.result import Result

log = logging.getLogger(__name__)

BOPS_NOTE = "BOPs of an N:M-sparse layer count only its kept MACs (n/m of the dense MACs); MACs are the dense count"


@register(GPUSQConfig, "gpusq", calib_size=512, needs_train_data=True)
def gpusq_step(
    model: nn.Module,
    config: GPUSQConfig,
    calib: Dataset,
    *,
    train_data: Dataset | None = None,
    eval_data: Dataset | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
) -> Result:
    """Run both GPUSQ-ViT stages on ``model`` in place (see :func:`~vitcompress.methods.gpusq.algorithm.gpusq_`).

    The sparse float and the PTQ model are evaluated on ``eval_data`` (if given and
    ``config.eval_stages``); the training state goes to ``state_dir/state`` (resumable with ``resume``).
    A detector (:mod:`~vitcompress.methods.gpusq.detector`) trains on ``train_data``'s scenes, its stages scored
    by box mAP (``sparse_float_bbox_map``, ``ptq_bbox_map`` instead of ``*_top1``).

    Returns:
        A :class:`Result` whose ``reference`` is the sparse float model (the per-layer errors measure
        the quantization alone), ``plan`` the sparse layers and their pattern.

    Raises:
        ConfigError: no ``train_data``.
        TrainingInterrupted: SIGTERM stopped a stage after saving its state; run again with ``resume``.
    """
    if train_data is None:
        raise ConfigError("GPUSQ-ViT trains the model: pass train_data (training images with labels)")
    t0 = time.perf_counter()
    stages: dict[str, dict[str, Any]] = {}
    key = "bbox_map" if is_detector(model) else "top1"

    def on_stage(name: str, m: nn.Module) -> None:
        if name == "qat":  # the final model: its caller evaluates it
            return
        score = None
        if eval_data is not None and config.eval_stages:
            score = getattr(evaluate_model(m, eval_data), key)
            log.info("%s: %s %.2f", name, key, score)
        stages[name] = {key: score, "size_bytes": cost(m).size_bytes}

    state = Path(state_dir) / "state" if state_dir is not None else None
    res = gpusq_(model, train_data, calib, config, state_dir=state, resume=resume, on_stage=on_stage)
    metrics = method_metrics(config, stages, res, key)
    metrics["gpusq_seconds"] = time.perf_counter() - t0
    return Result(
        model,
        "gpusq",
        config,
        metrics=metrics,
        plan=res["prune"]["sparse_layers"],
        reference=res["sparse_float"],
        report=gpusq_section,
    )


def method_metrics(config: GPUSQConfig, stages: dict, res: dict, key: str = "top1") -> dict[str, Any]:
    """The method's keys of ``metrics.json``: per-stage results (``key``: top1, or a detector's bbox_map), weight
    factors, training, config."""
    return {
        "pattern": config.pattern,
        f"sparse_float_{key}": stages["sparse_float"][key],
        f"ptq_{key}": stages["ptq"][key],
        "sparse_float_size_bytes": stages["sparse_float"]["size_bytes"],
        "weight_factors": res.get("weight_factors"),
        "sparse_layers": res["prune"]["sparse_layers"],
        "prune": {k: res["prune"][k] for k in ("steps", "seconds", "final")},
        "qat": {k: res["qat"][k] for k in ("steps", "seconds", "final")},
        "config": {
            "prune": config.prune.__dict__,
            "qat": config.qat.__dict__,
            "distill": dict(config.distill.__dict__),
            "distill_prune": config.distill_prune,
            "quant": config.quant.to_dict(),
        },
        "bops_note": BOPS_NOTE,
    }


def gpusq_section(m: dict) -> str:
    """The GPUSQ-ViT part of ``report.md`` from a job's metrics: stages, training steps, weight factors."""
    key, name = ("bbox_map", "box mAP") if "sparse_float_bbox_map" in m else ("top1", "top-1 (%)")
    lines = [
        "",
        "## GPUSQ-ViT stages",
        "",
        f"Pattern {m['pattern']} on {len(m['sparse_layers'])} layers; stage 1 {m['prune']['steps']} steps, "
        f"QAT {m['qat']['steps']} steps. The per-layer SQNR above compares with the sparse float model.",
        "",
        f"| stage | {name} |",
        "|---|---:|",
        *([f"| dense float | {m[f'fp_{key}']:.2f} |"] if f"fp_{key}" in m else []),
        f"| sparse float (after stage 1) | {_pct(m[f'sparse_float_{key}'])} |",
        f"| PTQ of the sparse model (start of stage 2) | {_pct(m[f'ptq_{key}'])} |",
        *([f"| after QAT | {m[f'q_{key}']:.2f} |"] if f"q_{key}" in m else []),
        "",
        "BOPs of a sparse layer count only its kept MACs; size counts kept values plus 2-bit indices "
        '(docs/gpusq.md, "Accounting"). Sparsity is simulated on CPU: the pruned weights are stored as zeros.',
        "",
    ]
    if m.get("weight_factors"):
        lines += [f"Weight factors W_j (patch, stages, final): {[round(w, 4) for w in m['weight_factors']]}", ""]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "not evaluated" if v is None else f"{v:.2f}"
