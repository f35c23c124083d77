"""Evol-Q as a method of :func:`vitcompress.compress_`: PTQ with ``config.recipe`` (a float model), then
:func:`~vitcompress.methods.evolq.evolq_`, with its resumable state in the job's folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch import nn

from vitcompress.errors import ConfigError, StateError
from vitcompress.eval.classification import evaluate
from vitcompress.methods.evolq.config import EvolQConfig
from vitcompress.methods.evolq.report import PASSES_CHART, passes_chart, report_section
from vitcompress.methods.evolq.search import evolq_
from vitcompress.methods.registry import register
from vitcompress.quantize import quantize_, recipe_of
from vitcompress.result import Result

STATE_FILE = "evolq_state.pt"  # in the job's folder (the name runs written before kept)


def check_model(model: nn.Module, config: EvolQConfig) -> bool:
    """Whether ``model`` must be quantized with ``config.recipe`` first (it is float).

    Raises:
        ConfigError: a float model and no recipe, or a model quantized with another recipe.
    """
    try:
        current = recipe_of(model)
    except StateError:
        current = None
    if current is None:
        if config.recipe is None:
            raise ConfigError(
                "recipe: Evol-Q refines a quantized model; give the recipe to quantize this float "
                "model with first (recipe=..., --recipe NAME|FILE)"
            )
        return True
    if config.recipe is not None and config.recipe.to_dict() != current.to_dict():
        raise ConfigError(
            f"recipe: the model is quantized with recipe {current.name!r} already, not with "
            f"{config.recipe.name!r}; leave the recipe out to refine it as it is"
        )
    return False


def _ptq(model: nn.Module, config: EvolQConfig, calib: Any) -> float | None:
    """Quantize a float ``model`` with ``config.recipe``; the seconds it took (None: quantized already)."""
    if not check_model(model, config):
        return None
    t0 = time.perf_counter()
    quantize_(model, config.recipe, calib)
    return time.perf_counter() - t0


@register(EvolQConfig, "evolq", calib_size=1000, check=check_model)
def evolq_step(
    model: nn.Module,
    config: EvolQConfig,
    calib: Any,
    *,
    train_data: Any = None,
    eval_data: Any = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
) -> Result:
    """PTQ (for a float model) then Evol-Q, in place.

    The state is ``state_dir/evolq_state.pt`` (``resume`` continues it). Metrics: ``ptq_top1`` (top-1
    on ``eval_data`` before the search; None without it), ``ptq_seconds`` (None when the model came
    quantized), ``evolq`` (:meth:`EvolQResult.to_dict`: config, per-pass history, ...) and
    ``evolq_seconds``. The plan is the :class:`EvolQResult`.
    """
    ptq_seconds = _ptq(model, config, calib)
    state = Path(state_dir) / STATE_FILE if state_dir is not None else None
    resuming = resume and state is not None and state.exists()
    # a fresh run measures the PTQ top-1 itself (history[0]); a resumed one restores it from the state
    ptq_top1 = evaluate(model, eval_data).top1 if resuming and eval_data is not None else None
    result = evolq_(model, calib, config, eval_data=eval_data, state_path=state, resume=resume)
    if not resuming:
        ptq_top1 = result.history[0]["top1"]
    summary = result.to_dict()
    metrics = {"ptq_top1": ptq_top1, "ptq_seconds": ptq_seconds, "evolq": summary, "evolq_seconds": result.seconds}
    files = {}
    if len(result.history) > 1:
        runs = [{"label": f"{recipe_of(model).name}, seed {config.seed}", "history": result.history}]
        files[PASSES_CHART] = lambda path: passes_chart(path, "Evol-Q", runs, "evaluation top-1 (%)", config.fitness)
    return Result(model, "evolq", config, metrics=metrics, plan=result, files=files, report=report_section(summary))
