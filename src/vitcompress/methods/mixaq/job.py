"""A MixA-Q search on a zoo model end to end (what ``vitcompress mixaq search`` runs).

Data: the calibration images and the held-out split that scores the candidates are disjoint subsets of
the training set, drawn from one seeded permutation (the calibration part equals
``calibration_subset(train, n_calib, seed)``); the test set is touched only to report the chosen
configurations (``test_limit`` images).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vitcompress.config import resolve_recipe
from vitcompress.errors import DataError
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json
from vitcompress.methods.mixaq.bops import mixed_cost
from vitcompress.methods.mixaq.model import mixaq_, mixed_blocks, model_groups, set_ratios
from vitcompress.methods.mixaq.search import EvaluateFn, MixAQSearchConfig, SearchResult, search_ratios

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def split_calibration(dataset: Dataset, n_calib: int, n_eval: int, seed: int = 0) -> tuple[Subset, Subset]:
    """(calibration, held-out) disjoint subsets of ``dataset`` from one seeded permutation."""
    if n_calib < 1 or n_eval < 1 or n_calib + n_eval > len(dataset):
        raise DataError(f"calibration + held-out sizes must be >= 1 each and fit the {len(dataset)} images, "
                        f"got {n_calib} + {n_eval}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[:n_calib]), Subset(dataset, order[n_calib:n_calib + n_eval])


def cached_batches(data: Dataset, batch_size: int = 250) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (images, labels) batches of a small dataset, loaded once for many evaluations."""
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    x, y = torch.stack(xs), torch.as_tensor(ys)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def model_evaluator(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> EvaluateFn:
    """``ratios -> (top-1 on batches, BOPs)`` for a two-branch model (its ratios are left set).

    Ratio vectors that select the same number of low windows in every block (a 1-window stage rounds
    every ratio below 0.5 to none) give the same model: they are evaluated once.
    """
    blocks = list(mixed_blocks(model).values())
    memo: dict[tuple[tuple[int, int], ...], tuple[float, int]] = {}

    def evaluate_ratios(ratios: tuple[float, ...]) -> tuple[float, int]:
        set_ratios(model, ratios, upper=1.0)
        key = tuple(b.window_counts(b.n_windows) for b in blocks)
        if key not in memo:
            memo[key] = (evaluate(model, batches, progress=False).top1, mixed_cost(model).bops)
        return memo[key]

    return evaluate_ratios


@dataclass(frozen=True)
class SearchJob:
    """What ``vitcompress mixaq search`` runs (see :func:`run_search_job`)."""

    model: str = "swin-fmnist"
    recipe: str = "w8a8"
    low_bits: int = 4
    n_calib: int = 256
    n_eval: int = 1000
    test_limit: int | None = 2000
    data_root: str | None = None
    calib_ratio: float = 0.8


def run_search_job(job: SearchJob, config: MixAQSearchConfig, out: str | Path, resume: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Load the model and data, run :func:`~vitcompress.methods.mixaq.mixaq_` and the search; write
    ``summary.json`` (with the test top-1 of the baseline and the chosen configurations) beside the
    search outputs. Returns the summary."""
    from vitcompress.data import load_dataset
    from vitcompress.models import input_spec_of, load_model

    model = load_model(job.model)
    spec = input_spec_of(model)
    train = load_dataset(spec, "train", job.data_root)
    calib, heldout = split_calibration(train, job.n_calib, job.n_eval, config.seed)
    mixaq_(model, calib, resolve_recipe(job.recipe), job.low_bits, calib_ratio=job.calib_ratio, progress=progress)
    tag = f"{job.model}|{job.recipe}|A{job.low_bits}|calib {job.n_calib}|eval {job.n_eval}|{job.calib_ratio:g}"
    result = search_ratios(model_evaluator(model, cached_batches(heldout)), len(model_groups(model)), config, out,
                           resume=resume, tag=tag)
    summary = {"job": asdict(job), "config": asdict(config), "held_out": _points(result)}
    if job.test_limit:
        test = load_dataset(spec, "test", job.data_root)
        summary["test"] = {name: _test_point(model, test, p, job.test_limit) for name, p in
                           [("baseline", result.baseline), *result.chosen.items()] if p is not None}
    write_json(Path(out) / SUMMARY_FILE, summary)
    return summary


def _points(result: SearchResult) -> dict[str, Any]:
    return {"baseline": result.baseline, "front": result.front, "chosen": result.chosen,
            "evaluated": len(result.evaluated)}


def _test_point(model: nn.Module, test: Dataset, point: dict[str, Any], limit: int) -> dict[str, Any]:
    set_ratios(model, point["ratios"], upper=1.0)
    return {"ratios": point["ratios"], "rel_bops": point["rel_bops"],
            "top1": evaluate(model, test, limit=limit, progress=False).top1}
