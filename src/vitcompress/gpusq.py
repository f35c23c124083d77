"""GPUSQ-ViT (seed 004, METHODS §3): sparsify -> distill -> quantize -> QAT, as one recipe.

Stage 1 (Algorithm 1 lines 1–17): the dense float model is the teacher; the student is the same
model with fixed N:M masks, trained with ``α·L_hard + β·L_soft + γ·L_feature``. Between the stages
the weight factors ``W_j`` are measured between the dense teacher and the sparse student (line 22).
Stage 2 (lines 18–35): the sparse float model is the teacher; the student is its PTQ-initialised
quantized copy (LSQ scales), trained with the ``W_j``-weighted feature loss. Masks never change.

Recipes: ``gpusq-int8`` (2:4, INT8 weights and activations) and ``gpusq-int4`` (pair-wise 4:8,
INT4 weights, INT8 activations: seed 004 Table 2's 62× "FLOPs" reduction for INT4 is 2 × 32, the
BOPs ratio of W4A8, where W4A4 would give 2 × 64). LayerNorm inputs stay float; the patch embedding
and head weights stay 8 bit (as in every vitcompress preset).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from vitcompress.config import QuantSpec, Recipe
from vitcompress.errors import ConfigError
from vitcompress.sparsity import mask_gradients_, sparsify_
from vitcompress.train.distill import DistillConfig, DistillLoss, weight_factors
from vitcompress.train.qat import prepare_sparse_qat_
from vitcompress.train.trainer import TrainConfig, TrainingInterrupted, train

log = logging.getLogger(__name__)

GPUSQ_RECIPES = ("gpusq-int8", "gpusq-int4")
StageHook = Callable[[str, nn.Module], None]
_EDGE_8BIT = (("patch_embed.proj.weight", (("bits", 8),)), ("head*.weight", (("bits", 8),)))  # Swin: head.fc


@dataclass(frozen=True)
class GPUSQConfig:
    """One GPUSQ-ViT run.

    Attributes:
        name: recipe name (``gpusq-int8`` / ``gpusq-int4`` or custom).
        pattern: ``"2:4"`` or ``"4:8"``.
        quant: the quantization recipe of stage 2 (scales become learnable).
        prune, qat: training of stage 1 and stage 2.
        distill: loss factors and switches (shared by both stages; ``weight_factors`` acts in stage 2).
        distill_prune: False = stage 1 trains on hard labels only ("2:4 without distillation").
        calib_size: training images for PTQ calibration and the weight-factor measurement.
        factor_images: of those, how many measure ``W_j``.
        on_indivisible: layers whose reduction is not a multiple of m: ``"error"`` or ``"skip"`` (left dense).
    """

    name: str
    pattern: str
    quant: Recipe
    prune: TrainConfig
    qat: TrainConfig
    distill: DistillConfig = field(default_factory=DistillConfig)
    distill_prune: bool = True
    calib_size: int = 512
    factor_images: int = 256
    on_indivisible: str = "skip"


def gpusq_quant_recipe(weight_bits: int, name: str) -> Recipe:
    """Per-channel symmetric weights at ``weight_bits`` (patch embedding, head: 8), 8-bit activations,
    q/k/v and softmax probabilities (uniform), LayerNorm inputs in float."""
    act = QuantSpec(8, "asymmetric")
    return Recipe(name=name, weight=QuantSpec(weight_bits, "symmetric", "channel"), act=act, qkv=act, probs=act,
                  norm=QuantSpec(32), overrides=_EDGE_8BIT)


def gpusq_preset(name: str, steps: int = 300, qat_steps: int | None = None, batch_size: int = 64,
                 seed: int = 0) -> GPUSQConfig:
    """``gpusq-int8`` (2:4 + INT8) or ``gpusq-int4`` (4:8 + W4A8) with ``steps`` per stage (short schedules).

    Learning rates: 5e-4 for stage 1 (seed 004 Table 1, DeiT), 1e-4 for QAT (fine-tuning a PTQ start).
    """
    if name not in GPUSQ_RECIPES:
        raise ConfigError(f"recipe must be one of {list(GPUSQ_RECIPES)}, got {name!r}")
    int8 = name == "gpusq-int8"
    prune = TrainConfig(steps=steps, batch_size=batch_size, lr=5e-4, min_lr=1e-6, warmup_steps=min(20, steps // 10),
                        seed=seed, checkpoint_every=100)
    qat = replace(prune, steps=qat_steps or steps, lr=1e-4, seed=seed + 1)
    return GPUSQConfig(name=name, pattern="2:4" if int8 else "4:8",
                       quant=gpusq_quant_recipe(8 if int8 else 4, name), prune=prune, qat=qat)


def _images(data: Dataset, n: int, batch_size: int = 64) -> list[torch.Tensor]:
    n = min(n, len(data))
    return [torch.stack([data[i][0] for i in range(s, min(n, s + batch_size))]) for s in range(0, n, batch_size)]


def sparse_distill_(model: nn.Module, train_set: Dataset, config: GPUSQConfig, state_dir: Path | None = None,
                    resume: bool = False, progress: bool = True) -> tuple[nn.Module, dict]:
    """Stage 1: sparsify ``model`` in place and train it against its dense copy. Returns (dense teacher, info)."""
    teacher = copy.deepcopy(model).eval()
    plan = sparsify_(model, config.pattern, on_indivisible=config.on_indivisible)
    dcfg = config.distill if config.distill_prune else replace(config.distill, soft=False, feature=False)
    loss = DistillLoss(teacher, model, dcfg)
    try:
        info = train(model, loss, train_set, config.prune, state_dir / "prune" if state_dir else None, resume,
                     after_backward=mask_gradients_, progress=progress, desc="stage 1: sparse distill")
    finally:
        loss.close()
    info["sparse_layers"] = plan
    _stop_if_interrupted(info, "stage 1 (sparse distillation)", state_dir)
    return teacher, info


def _stop_if_interrupted(info: dict, stage: str, state_dir: Path | None) -> None:
    # a SIGTERM'd stage saved its state: the next stage must not start from a half-trained model
    if info["interrupted"]:
        raise TrainingInterrupted(f"{stage} stopped by SIGTERM at step {info['steps']}; state saved in "
                                  f"{state_dir}; run again with resume to continue")


def sparse_qat_(model: nn.Module, train_set: Dataset, calib: Dataset, factors: list[float], config: GPUSQConfig,
                state_dir: Path | None = None, resume: bool = False, progress: bool = True,
                on_stage: StageHook | None = None) -> tuple[nn.Module, dict]:
    """Stage 2: PTQ the sparse float ``model`` in place, then QAT against its float copy. Returns (teacher, info)."""
    teacher = copy.deepcopy(model).eval()
    prepare_sparse_qat_(model, config.quant, calib)
    if on_stage is not None:
        on_stage("ptq", model)
        model.train()
    loss = DistillLoss(teacher, model, config.distill, point_weights=factors)
    try:
        info = train(model, loss, train_set, config.qat, state_dir / "qat" if state_dir else None, resume,
                     after_backward=mask_gradients_, progress=progress, desc="stage 2: sparse QAT")
    finally:
        loss.close()
    _stop_if_interrupted(info, "stage 2 (sparse QAT)", state_dir)
    return teacher, info


def run_gpusq(model: nn.Module, train_set: Dataset, calib: Dataset, config: GPUSQConfig,
              state_dir: str | Path | None = None, resume: bool = False, progress: bool = True,
              stop_after_prune: bool = False, on_stage: StageHook | None = None) -> dict:
    """Both stages on ``model`` (in place: it ends sparse and quantized).

    ``on_stage(name, model)`` is called after stage 1 (``"sparse_float"``), after PTQ (``"ptq"``) and
    after QAT (``"qat"``), e.g. to evaluate each step.

    Returns:
        ``{"dense": dense float copy, "sparse_float": sparse float copy after stage 1, "weight_factors",
        "prune": stage-1 info, "qat": stage-2 info}`` (no ``qat`` with ``stop_after_prune``).
    """
    state = Path(state_dir) if state_dir is not None else None
    dense, prune_info = sparse_distill_(model, train_set, config, state, resume, progress)
    out = {"dense": dense, "prune": prune_info, "sparse_float": None}
    out["sparse_float"] = copy.deepcopy(model).eval()
    if on_stage is not None:
        on_stage("sparse_float", model)
    if stop_after_prune:
        return out
    batches = _images(calib, config.factor_images)
    factors = weight_factors(dense, model, batches, config.distill)
    log.info("weight factors W_j: %s", [round(w, 4) for w in factors])
    out["weight_factors"] = factors
    _, out["qat"] = sparse_qat_(model, train_set, calib, factors, config, state, resume, progress, on_stage)
    if on_stage is not None:
        on_stage("qat", model)
    return out


# ---- the compress recipe: load, run, evaluate, cost, save, report --------------------------------------
@dataclass(frozen=True)
class GPUSQJob:
    """``vitcompress compress --recipe gpusq-*``: what to compress and where the training state goes."""

    model: str
    config: GPUSQConfig
    data_root: str | None = None
    eval_limit: int | None = None
    seed: int = 0
    resume: bool = False
    progress: bool = True
    eval_stages: bool = True  # evaluate after stage 1 and after PTQ too (False: only the final model)


def run_gpusq_job(job: GPUSQJob, out_dir: str | Path | None = None) -> dict:
    """Run GPUSQ-ViT on a zoo model; evaluate dense, sparse float, PTQ and QAT models; write outputs.

    Writes ``model/`` (safetensors + recipe + ``sparsity.json``), ``metrics.json``, ``report.md`` and
    the per-layer charts to ``out_dir``; training state (resumable) under ``out_dir/state``.
    """
    import time

    from vitcompress.cost import cost
    from vitcompress.data.datasets import calibration_subset, load_dataset
    from vitcompress.eval.classification import evaluate
    from vitcompress.models.registry import input_spec_of, load_model

    t0 = time.perf_counter()
    model = load_model(job.model)
    spec = input_spec_of(model)
    train_set = load_dataset(spec, "train", job.data_root, augment=True, seed=job.seed)
    calib = calibration_subset(load_dataset(spec, "train", job.data_root), job.config.calib_size, seed=job.seed)
    test = load_dataset(spec, "test", job.data_root)
    fp = evaluate(model, test, limit=job.eval_limit, progress=job.progress)
    fp_cost = cost(model)
    stages: dict[str, dict] = {}

    def on_stage(name: str, m: nn.Module) -> None:
        if not job.eval_stages and name != "qat":
            stages[name] = {"top1": None, "top5": None, "size_bytes": cost(m).size_bytes}
            return
        r = evaluate(m, test, limit=job.eval_limit, progress=job.progress)
        c = cost(m)
        stages[name] = {"top1": r.top1, "top5": r.top5, "size_bytes": c.size_bytes}
        log.info("%s: top-1 %.2f %%", name, r.top1)

    state = Path(out_dir) / "state" if out_dir is not None else None
    res = run_gpusq(model, train_set, calib, job.config, state, job.resume, job.progress, on_stage=on_stage)
    q_cost = cost(model)
    metrics = gpusq_metrics(job, fp, fp_cost, q_cost, stages, res)
    metrics["seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        write_gpusq_outputs(Path(out_dir), model, res["sparse_float"], calib, metrics)
    return metrics


def gpusq_metrics(job: GPUSQJob, fp, fp_cost, q_cost, stages: dict, res: dict) -> dict:
    """The ``metrics.json`` of a GPUSQ run (keys of the PTQ report plus per-stage results)."""
    final = stages["qat"]
    return {
        "model": job.model, "recipe": job.config.name, "seed": job.seed, "pattern": job.config.pattern,
        "fp_top1": fp.top1, "fp_top5": fp.top5, "q_top1": final["top1"], "q_top5": final["top5"],
        "sparse_float_top1": stages["sparse_float"]["top1"], "ptq_top1": stages["ptq"]["top1"],
        "eval_images": fp.images, "macs": q_cost.macs, "bops": q_cost.bops, "fp_bops": fp_cost.bops,
        "rel_bops": q_cost.rel_bops, "bops_reduction": fp_cost.bops / max(1, q_cost.bops),
        "size_bytes": q_cost.size_bytes, "fp_size_bytes": fp_cost.size_bytes,
        "size_reduction": fp_cost.size_bytes / max(1, q_cost.size_bytes),
        "sparse_float_size_bytes": stages["sparse_float"]["size_bytes"],
        "calib_size": job.config.calib_size, "weight_factors": res.get("weight_factors"),
        "sparse_layers": res["prune"]["sparse_layers"],
        "prune": {k: res["prune"][k] for k in ("steps", "seconds", "final")},
        "qat": {k: res["qat"][k] for k in ("steps", "seconds", "final")},
        "config": {"prune": job.config.prune.__dict__, "qat": job.config.qat.__dict__,
                   "distill": {k: v for k, v in job.config.distill.__dict__.items()},
                   "distill_prune": job.config.distill_prune, "quant": job.config.quant.to_dict()},
        "bops_note": "BOPs of an N:M-sparse layer count only its kept MACs (n/m of the dense MACs); "
                     "MACs are the dense count",
    }


def write_gpusq_outputs(out: Path, model: nn.Module, sparse_float: nn.Module, calib: Dataset, metrics: dict) -> None:
    """``model/`` (+ ``sparsity.json``), ``metrics.json``, ``report.md`` and charts."""
    from vitcompress.io import write_json, write_text
    from vitcompress.quantize import save
    from vitcompress.report.analysis import layer_stats
    from vitcompress.report.charts import bar_chart
    from vitcompress.report.markdown import compression_report

    out.mkdir(parents=True, exist_ok=True)
    save(model, out / "model")  # writes model/sparsity.json too; restore re-attaches the masks
    batch = torch.stack([calib[i][0] for i in range(min(64, len(calib)))])
    layers = layer_stats(sparse_float, model, batch)
    labels = [r.name for r in layers]
    bar_chart(out / "bits_per_layer.png", labels, {"weight": [r.w_bits for r in layers],
                                                   "input": [float(r.a_bits) for r in layers]},
              "bits", f"{metrics['model']} / {metrics['recipe']}: bits per layer")
    write_text(out / "report.md", compression_report(metrics, layers, ["bits_per_layer.png"]) + gpusq_section(metrics))
    write_json(out / "metrics.json", metrics)


def gpusq_section(m: dict) -> str:
    """The GPUSQ-ViT part of the report: stages, reductions, weight factors."""
    lines = [
        "", "## GPUSQ-ViT stages", "",
        f"Pattern {m['pattern']} on {len(m['sparse_layers'])} layers; stage 1 {m['prune']['steps']} steps, "
        f"QAT {m['qat']['steps']} steps. The per-layer SQNR above compares with the sparse float model.", "",
        "| stage | top-1 (%) |", "|---|---:|",
        f"| dense float | {m['fp_top1']:.2f} |", f"| sparse float (after stage 1) | {_pct(m['sparse_float_top1'])} |",
        f"| PTQ of the sparse model | {_pct(m['ptq_top1'])} |", f"| after QAT | {m['q_top1']:.2f} |", "",
        f"Reduction vs FP32: size ×{m['size_reduction']:.2f}, BOPs ×{m['bops_reduction']:.1f} "
        "(BOPs of a sparse layer count only its kept MACs; size counts kept values plus 2-bit indices, "
        "METHODS §3.1). Sparsity is simulated on CPU: the pruned weights are stored as zeros.", "",
    ]
    if m.get("weight_factors"):
        lines += [f"Weight factors W_j (patch, stages, final): {[round(w, 4) for w in m['weight_factors']]}", ""]
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "not evaluated" if v is None else f"{v:.2f}"
