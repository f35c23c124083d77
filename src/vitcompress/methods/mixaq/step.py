"""MixA-Q as a method of :func:`vitcompress.compress_`: the handler, its report section, save and restore.

Data: the calibration images and the held-out images that score the candidates are disjoint subsets of
the training set, drawn from one seeded permutation: a job's calibration subset is
``calibration_subset(train, calib_size, seed)`` (the first ``calib_size`` images of the permutation) and
the held-out images are the next ``eval_images`` (:func:`held_out_subset`). The evaluation set (a job's
test set) only reports the baseline and the chosen configurations; it never selects anything.

Outputs in ``state_dir`` (the job's folder): ``state.json`` (resume state of the search),
``pareto.json``, ``chosen.json``, ``pareto.png``; a job adds ``summary.json``, and ``model/`` with
``layout.json`` (low bits and ratios) beside the weights, from which :func:`vitcompress.restore` rebuilds it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from vitcompress.device import model_device, to_device
from vitcompress.errors import CheckpointError, ConfigError, DataError
from vitcompress.eval.classification import evaluate
from vitcompress.eval.task import evaluate_model
from vitcompress.methods.mixaq import detector as det
from vitcompress.methods.mixaq.bops import act_bits_eq, mixed_cost
from vitcompress.methods.mixaq.config import MixAQConfig
from vitcompress.methods.mixaq.model import (
    memoized_evaluator,
    mixaq_,
    model_groups,
    set_ratios,
    two_branch_,
)
from vitcompress.methods.mixaq.saqa import saqa_
from vitcompress.methods.mixaq.search import EvaluateFn, SearchResult, pareto_chart, search_ratios
from vitcompress.methods.registry import register
from vitcompress.models.detection import is_detector
from vitcompress.quantize import LAYOUT_ATTR
from vitcompress.result import Result

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
LAYOUT_TYPE = "vitcompress.MixAQ"


def held_out_subset(calib: Subset, n: int, seed: int) -> Subset:
    """``n`` images of ``calib``'s dataset disjoint from ``calib``: the first ones of the seeded permutation
    that ``calibration_subset(dataset, len(calib), seed)`` takes its calibration images from.

    When ``calib`` is that calibration subset (same seed), these are the next ``n`` images of the
    permutation, the split every MixA-Q search has used.

    Raises:
        DataError: the dataset has fewer than ``n`` images outside ``calib``.
    """
    dataset = calib.dataset
    taken = set(calib.indices)
    if len(dataset) - len(taken) < n:
        raise DataError(
            f"eval_images is {n} but the training set has only {len(dataset) - len(taken)} images "
            "outside the calibration subset"
        )
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    rest = [i for i in order if i not in taken]
    return Subset(dataset, rest[:n])


def cached_batches(
    data: Dataset, batch_size: int = 250, device: torch.device | str | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (images, labels) batches of a small dataset, loaded once (onto ``device`` when given: the model's) for
    many evaluations."""
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    x, y = torch.stack(xs), torch.as_tensor(ys)
    if device is not None:
        x, y = to_device((x, y), device)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def model_evaluator(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> EvaluateFn:
    """``ratios -> (top-1 on batches, BOPs)`` for a two-branch classifier (see :func:`memoized_evaluator`)."""
    return memoized_evaluator(model, lambda m: evaluate(m, batches).top1, lambda m: mixed_cost(m).bops)


def _held_out(calib: Any, train_data: Dataset | None, config: MixAQConfig) -> Subset:
    if isinstance(calib, Subset):
        return held_out_subset(calib, config.eval_images, config.search.seed)
    if isinstance(train_data, Dataset):  # the caller keeps it disjoint from calib
        order = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(config.search.seed))
        return Subset(train_data, order[: config.eval_images].tolist())
    raise ConfigError(
        "MixA-Q scores its candidates on held-out training images: pass calib as a Subset of the "
        "training set (as calibration_subset gives and run_job passes), or train_data"
    )


def _saqa_data(calib: Any, train_data: Dataset | None) -> Dataset:
    if train_data is not None:
        return train_data
    if isinstance(calib, Subset):
        return calib.dataset  # the (plain) training set
    raise ConfigError("SAQA fine-tunes the model: pass train_data, or calib as a Subset of the training set")


def _model_name(model: nn.Module) -> str:
    source = getattr(model, "vitcompress_source", None) or {}
    return str(source.get("name", type(model).__name__))


@register(MixAQConfig, "mixaq", calib_size=256)
def mixaq_step(
    model: nn.Module,
    config: MixAQConfig,
    calib: Any,
    *,
    train_data: Dataset | None = None,
    eval_data: Dataset | None = None,
    state_dir: Path | None = None,
    resume: bool = False,
) -> Result:
    """Run MixA-Q on a float timm Swin in place: :func:`~vitcompress.methods.mixaq.mixaq_` (PTQ, two-branch
    blocks, low-branch calibration), optionally SAQA, then the NSGA-II search of the ratios on held-out
    training images; the model is left at the configuration chosen for ``config.choose``. A Swin detector
    is scored by box mAP on held-out train scenes and costed on its backbone
    (:mod:`~vitcompress.methods.mixaq.detector`; the points' ``top1`` then holds box mAP, ``metrics["score"]``);
    its SAQA distils the backbone from the float detector on the train scenes' images
    (:mod:`~vitcompress.methods.mixaq.saqa_detector`).

    Args:
        calib: calibration images; a Subset of the training set (as ``calibration_subset`` gives), whose
            dataset also provides the held-out images (:func:`held_out_subset`).
        train_data: SAQA's training images (default: ``calib``'s dataset); without a Subset ``calib``, the
            held-out images are drawn from it (keep it disjoint from ``calib``).
        eval_data: the baseline and the chosen configurations are evaluated on it (``metrics["test"]``).
        state_dir: the search's files (``state.json``, ``pareto.json``, ``chosen.json``, ``pareto.png``)
            and SAQA's checkpoints (``saqa/``).
        resume: continue the search (and SAQA) saved in ``state_dir``.

    Returns:
        A :class:`Result`: ``plan`` = the chosen ratios, ``cost`` = :func:`mixed_cost` at them,
        ``metrics`` = ``held_out`` (baseline, front, chosen), ``test``, ``config`` and timings.

    Raises:
        UnsupportedModelError: not a Swin; ConfigError: no held-out images can be drawn;
        StateError: ``state_dir`` holds a search with other settings;
        TrainingInterrupted: SIGTERM stopped SAQA after saving its state (run again with ``resume``).
    """
    t0 = time.perf_counter()
    detector = is_detector(model)
    if detector:  # candidates scored by box mAP, costed on the backbone
        fp_bops = det.float_bops(model)
    heldout = _held_out(calib, train_data, config)
    teacher = copy.deepcopy(model).eval() if config.saqa is not None else None
    recipe = config.recipe
    if config.saqa is not None:
        from vitcompress.train.qat import qat_recipe

        recipe = qat_recipe(recipe)
    mixaq_(model, calib, recipe, config.low_bits, calib_ratio=config.calib_ratio)
    metrics: dict[str, Any] = {"low_bits": config.low_bits, "mixaq_seconds": time.perf_counter() - t0}
    metrics["score"] = det.SCORE_NAME if detector else "top-1"  # what the points' "top1" holds
    tag = (
        f"{_model_name(model)}|{config.recipe.name}|A{config.low_bits}|calib {len(calib)}|eval "
        f"{config.eval_images}|{config.calib_ratio:g}"
    )
    if config.saqa is not None:
        saqa_dir = Path(state_dir) / "saqa" if state_dir is not None else None
        trained = saqa_(
            model, _saqa_data(calib, train_data), config.saqa, teacher=teacher, state_dir=saqa_dir, resume=resume
        )
        metrics["saqa"] = {"steps": trained["steps"], "seconds": trained["seconds"]}
        tag += f"|saqa {json.dumps(config.to_dict()['saqa'], sort_keys=True)}"
    t1 = time.perf_counter()
    if detector:
        evaluator = det.detector_evaluator(model, heldout)
    else:
        evaluator = model_evaluator(model, cached_batches(heldout, device=model_device(model)))
    search = search_ratios(
        evaluator,
        len(model_groups(model)),
        config.search,
        state_dir,
        resume=resume,
        tag=tag,
    )
    metrics["search_seconds"] = time.perf_counter() - t1
    chosen = search.chosen.get(config.choose_key)
    if chosen is None:
        log.warning("no front point within relative BOPs %s: the model stays at ratio 0", config.choose_key)
    point = chosen or search.baseline
    summary = {"config": config.to_dict(), "held_out": _points(search)}
    if eval_data is not None:
        summary["test"] = _test_points(model, eval_data, search)
    set_ratios(model, point["ratios"], upper=1.0)
    report_cost = mixed_cost(model)
    metrics.update(summary)
    metrics["chosen"] = {
        "target": config.choose,
        "found": chosen is not None,
        "ratios": point["ratios"],
        "rel_bops": point["rel_bops"],
        "held_out_top1": point["top1"],
    }
    metrics["act_bits_eq"] = act_bits_eq(report_cost)
    section = mixaq_section(metrics)
    if detector:
        metrics["detector_cost"] = det.detector_cost_metrics(model, fp_bops, point["ratios"])
        section += det.detector_section(metrics)
    layout = {
        "type": LAYOUT_TYPE,
        "version": 1,
        "builder": f"{__name__}:rebuild_",
        "low_bits": config.low_bits,
        "ratios": point["ratios"],
        "prune": None,
    }
    setattr(model, LAYOUT_ATTR, layout)  # save() writes it; restore() rebuilds the two-branch blocks from it
    files = {SUMMARY_FILE: summary, "pareto.png": _chart_writer(search, config)}
    return Result(
        model,
        "mixaq",
        config,
        metrics=metrics,
        plan=list(point["ratios"]),
        cost=report_cost,
        files=files,
        report=section,
        layer_report=False,
    )


def _points(result: SearchResult) -> dict[str, Any]:
    return {
        "baseline": result.baseline,
        "front": result.front,
        "chosen": result.chosen,
        "evaluated": len(result.evaluated),
    }


def _test_points(model: nn.Module, data: Dataset, search: SearchResult) -> dict[str, Any]:
    """Top-1 (a detector's box mAP, under the same key) on ``data`` of the baseline and of every chosen point (each
    distinct vector evaluated once)."""
    out, seen = {}, {}
    detector = is_detector(model)
    for name, p in [("baseline", search.baseline), *search.chosen.items()]:
        if p is None:
            continue
        key = tuple(p["ratios"])
        if key not in seen:
            set_ratios(model, p["ratios"], upper=1.0)
            seen[key] = evaluate_model(model, data).bbox_map if detector else evaluate(model, data).top1
        out[name] = {"ratios": p["ratios"], "rel_bops": p["rel_bops"], "top1": seen[key]}
    return out


def _chart_writer(search: SearchResult, config: MixAQConfig):
    def write(path: Path) -> None:
        pareto_chart(path, {f"{config.search.init} init": search.evaluated}, search.baseline)

    return write


def mixaq_section(m: dict[str, Any]) -> str:
    """The MixA-Q part of ``report.md``: the search, the front and the chosen configuration."""
    c, held, test = m["config"], m["held_out"], m.get("test", {})
    score = m.get("score", "top-1")
    s = c["search"]
    lines = [
        "",
        "## MixA-Q",
        "",
        f"High branch `{c['recipe']}`, low branch A{c['low_bits']}; the low branch calibrated at ratio "
        f"{c['calib_ratio']:g}. NSGA-II (population {s['population']}, {s['generations']} generations, "
        f"{s['init']} initial population, seed {s['seed']}) evaluated {held['evaluated']} ratio vectors on "
        f"{c['eval_images']} held-out training images ({score}). Relative BOPs here are BOPs / BOPs at ratio 0 "
        "(every window high). The per-layer table does not apply to two-branch blocks.",
        "",
        f"| point | ratios | rel. BOPs | held-out {score} | test {score} |",
        "|---|---|---:|---:|---:|",
    ]

    def row(name: str, p: dict[str, Any], test_key: str | None) -> str:
        t = test.get(test_key) if test_key else None
        shown = f"{t['top1']:.2f}" if t else ""
        ratios = " ".join(f"{r:g}" for r in p["ratios"])
        return f"| {name} | {ratios} | {p['rel_bops']:.4f} | {p['top1']:.2f} | {shown} |"

    lines.append(row("ratio 0 (uniform)", held["baseline"], "baseline"))
    for target, p in held["chosen"].items():
        lines.append(row(f"best within {target}", p, target) if p else f"| best within {target} | none | | | |")
    lines += ["", f"Pareto front: {len(held['front'])} points (`pareto.json`, `pareto.png`).", ""]
    chosen = m["chosen"]
    if chosen["found"]:
        lines.append(
            f"The model is set to the point chosen for relative BOPs {chosen['target']:g}: ratios "
            f"{chosen['ratios']} (MAC-weighted activation bits {m['act_bits_eq']:.2f})."
        )
    else:
        lines.append(f"No front point lies within relative BOPs {chosen['target']:g}: the model stays at ratio 0.")
    return "\n".join([*lines, ""])


# ---- save / restore ---------------------------------------------------------------------------------------
def rebuild_(model: nn.Module, layout: dict[str, Any]) -> nn.Module:
    """Give a prepared (quantized, not yet loaded) Swin the two-branch blocks and ratios of ``layout``."""
    if layout.get("type") != LAYOUT_TYPE or layout.get("version") != 1:
        raise CheckpointError(f"not a MixA-Q layout (type {LAYOUT_TYPE!r}, version 1): {layout.get('type')!r}")
    two_branch_(model, layout["low_bits"])
    set_ratios(model, layout["ratios"], layout.get("prune"), upper=1.0)
    return model
