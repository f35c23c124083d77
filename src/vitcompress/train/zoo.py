"""Training a reference model of the zoo and writing its checkpoint + manifest.

A zoo recipe (:class:`~vitcompress.models.zoo.TrainRecipe`) is written in epochs; it runs through the
generic step-indexed trainer (:func:`vitcompress.train.trainer.train`) after conversion to steps by
:func:`recipe_config`: one epoch is ``len(train_set) // batch_size`` steps (the trainer drops the last
partial batch of each epoch), warm-up epochs become ``int(warmup_epochs × steps per epoch)`` steps, and
the state is checkpointed once per epoch. The loss is cross entropy with label smoothing.
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from vitcompress.data.datasets import load_dataset
from vitcompress.device import describe, model_device, resolve_device
from vitcompress.errors import ConfigError
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json
from vitcompress.models.checkpoint import save_weights
from vitcompress.models.registry import input_spec_of
from vitcompress.models.zoo import ZOO, TrainRecipe, ZooEntry, build_zoo_model
from vitcompress.train.trainer import LossFn, TrainConfig, TrainingInterrupted, train

log = logging.getLogger(__name__)


def recipe_config(recipe: TrainRecipe, n_images: int, log_every: int = 50) -> TrainConfig:
    """The :class:`TrainConfig` of ``recipe`` on a training set of ``n_images`` images."""
    per_epoch = n_images // recipe.batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch_size {recipe.batch_size} exceeds the training set size {n_images}")
    steps = recipe.epochs * per_epoch
    return TrainConfig(
        steps=steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        min_lr=recipe.min_lr,
        weight_decay=recipe.weight_decay,
        warmup_steps=int(recipe.warmup_epochs * per_epoch),
        grad_clip=recipe.grad_clip,
        seed=recipe.seed,
        checkpoint_every=per_epoch,
        log_every=min(log_every, steps),
    )


def smoothed_cross_entropy(label_smoothing: float) -> LossFn:
    """``loss_fn(model, x, y)`` for :func:`~vitcompress.train.trainer.train`: cross entropy with label smoothing."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
        return loss, {"loss": loss.item()}

    return loss_fn


def train_with_recipe(
    model: nn.Module, train_set: Dataset, recipe: TrainRecipe, state_dir: str | Path | None, resume: bool = True
) -> dict:
    """Train ``model`` in place on ``train_set`` following ``recipe`` (see the module docstring).

    Args:
        state_dir: folder of the resumable trainer state (``trainer_state.pt``, written every epoch).
        resume: continue from that state when it exists.

    Returns:
        :func:`~vitcompress.train.trainer.train`'s summary (``steps``, ``seconds``, ``final``, ``history``, ...).
    """
    config = recipe_config(recipe, len(train_set))
    return train(
        model,
        smoothed_cross_entropy(recipe.label_smoothing),
        train_set,
        config,
        state_dir=state_dir,
        resume=resume,
        desc="zoo train",
    )


def train_zoo_model(
    name: str,
    state_dir: str | Path,
    data_root: str | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
) -> dict:
    """Train zoo model ``name`` with its recipe on ``device`` (``auto|cpu|cuda|cuda:N``; None: the CPU), then
    write ``<name>.safetensors`` and ``<name>.json``.

    Returns the manifest.

    Raises:
        TrainingInterrupted: SIGTERM stopped the training (its state is in ``state_dir``; rerun to resume).
    """
    entry = ZOO[name]
    target = resolve_device(device) if device is not None else torch.device("cpu")  # checked before any work
    torch.manual_seed(entry.recipe.seed)
    model = build_zoo_model(name).to(target)
    spec = input_spec_of(model)
    train_set = load_dataset(spec, "train", data_root, augment=True, seed=entry.recipe.seed)
    info = train_with_recipe(model, train_set, entry.recipe, state_dir, resume=resume)
    if info["interrupted"]:
        raise TrainingInterrupted(
            f"training of {name} stopped by SIGTERM at step {info['steps']}; state saved in "
            f"{state_dir}: run the same command again to resume"
        )
    out = Path(out_dir) if out_dir else entry.checkpoint.parent
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model, out / f"{name}.safetensors")
    manifest = build_manifest(entry, model, data_root, info)
    write_json(out / f"{name}.json", manifest)
    return manifest


def build_manifest(entry: ZooEntry, model: torch.nn.Module, data_root: str | None, info: dict) -> dict:
    """Manifest of a trained zoo model: architecture, recipe, accuracy on the 10k test set, MACs."""
    from vitcompress.cost.counter import cost

    spec = input_spec_of(model)
    metrics = evaluate(model, load_dataset(spec, "test", data_root))
    report = cost(model)
    return {
        "name": entry.name,
        "timm_class": type(model).__name__,
        "arch_kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in entry.kwargs.items()},
        "input": {"img_size": spec.img_size, "in_chans": spec.in_chans, "mean": spec.mean, "std": spec.std},
        "params": sum(p.numel() for p in model.parameters()),
        "macs": report.macs,
        "test_top1": round(metrics.top1, 2),
        "test_top5": round(metrics.top5, 2),
        "test_images": metrics.images,
        "train_command": f"vitcompress zoo train {entry.name}",
        "recipe": entry.recipe.__dict__,
        "train_steps": info["steps"],
        "train_seconds": round(info["seconds"], 1),
        "train_machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        **describe(model_device(model)),
    }


def train_zoo_detector(
    name: str,
    state_dir: str | Path,
    data_root: str | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    max_steps: int | None = None,
) -> dict:
    """Train the reference detector ``name`` (:data:`~vitcompress.models.zoo.DETECTOR_ZOO`) with
    :func:`~vitcompress.train.detection.train_detector`'s recipe on the train scenes, resumably from ``state_dir``.

    When the recipe is complete the detector folder ``<out_dir>/<name>/`` (default: the zoo) and its manifest
    ``<name>.json`` (COCO box and mask AP on the 500 val scenes) are written, and the manifest is returned; with
    ``max_steps`` short of the recipe, the run stops at that global step with a checkpoint and a folder
    ``state_dir/model-step<N>`` to evaluate, and the manifest is ``{"name", "steps", "complete": False}``.
    """
    from vitcompress.data.scenes import load_scenes
    from vitcompress.models.detection.source import save_detector
    from vitcompress.models.zoo import DETECTOR_ZOO
    from vitcompress.train.detection import DetectorTrainRecipe, train_detector

    entry, recipe = DETECTOR_ZOO[name], DetectorTrainRecipe()
    target = resolve_device(device) if device is not None else torch.device("cpu")  # checked before any work
    config = entry.config()
    train_set = load_scenes("train", data_root=data_root, masks=config.head == "mask_rcnn")
    model = train_detector(config, train_set, state_dir, recipe, max_steps=max_steps, device=target)
    total = recipe.total_steps(len(train_set))
    if max_steps is not None and max_steps < total:
        return {"name": name, "steps": max_steps, "total_steps": total, "complete": False}
    out = Path(out_dir) if out_dir else entry.folder.parent
    save_detector(model, out / name)
    manifest = detector_manifest(entry, model, data_root, recipe, total)
    write_json(out / f"{name}.json", manifest)
    return manifest


def detector_manifest(entry, model: nn.Module, data_root: str | None, recipe, steps: int) -> dict:
    """Manifest of a trained reference detector: its config, recipe, COCO AP on the val scenes, MACs."""
    from dataclasses import asdict

    from vitcompress.cost.counter import cost
    from vitcompress.data.scenes import load_scenes
    from vitcompress.eval.task import evaluate_model

    metrics = evaluate_model(model, load_scenes("val", data_root=data_root, masks=False))
    return {
        "name": entry.name,
        "detector": model.detector_config.as_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "macs": cost(model).macs,
        **{k: v for k, v in metrics.as_dict().items() if k.startswith(("bbox_", "segm_")) and v is not None},
        "val_images": metrics.images,
        "train_command": entry.train_command,
        "recipe": asdict(recipe),
        "train_steps": steps,
        "train_machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        **describe(model_device(model)),
    }
