"""Training a reference model of the zoo and writing its checkpoint + manifest."""

from __future__ import annotations

import logging
import platform
from pathlib import Path

import torch

from vitcompress.data.datasets import load_dataset
from vitcompress.eval.classification import evaluate
from vitcompress.io import write_json
from vitcompress.models.checkpoint import save_weights
from vitcompress.models.registry import input_spec_of
from vitcompress.models.zoo import ZOO, ZooEntry, build_zoo_model
from vitcompress.train.classifier import train_classifier

log = logging.getLogger(__name__)


def train_zoo_model(name: str, state_dir: str | Path, data_root: str | None = None,
                    out_dir: str | Path | None = None, resume: bool = True) -> dict:
    """Train zoo model ``name`` with its recipe, then write ``<name>.safetensors`` and ``<name>.json``.

    Returns the manifest.
    """
    entry = ZOO[name]
    torch.manual_seed(entry.recipe.seed)
    model = build_zoo_model(name)
    spec = input_spec_of(model)
    train_set = load_dataset(spec, "train", data_root, augment=True, seed=entry.recipe.seed)
    info = train_classifier(model, train_set, entry.recipe, state_dir, resume=resume)
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
        "train_seconds": round(info["seconds"], 1),
        "train_machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
