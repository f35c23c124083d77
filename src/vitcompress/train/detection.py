"""``train_detector``: the seeded, resumable training recipe of the reference detectors on the scenes.

AdamW with linear warm-up and cosine decay (Loshchilov and Hutter, 2019, "Decoupled Weight Decay
Regularization", arXiv:1711.05101), no weight decay on biases and norms, gradient clipping, the summed
torchvision losses (RPN, box, and mask for Mask R-CNN), batches drawn from a seeded permutation per epoch.
Every ``checkpoint_every`` steps the state (weights, optimizer, step) is written atomically to
``state_dir/state.pt``; a run started again with the same ``state_dir`` continues from it and draws the same
batches, so an interrupted run ends with the weights an uninterrupted one has. At the end the detector is
saved as a model folder (``state_dir/model``, see :func:`~vitcompress.models.detection.source.save_detector`)
and scored on the val scenes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vitcompress.data.scenes import collate_detection
from vitcompress.device import model_device, to_device
from vitcompress.errors import CheckpointError
from vitcompress.io import atomic_path, write_json
from vitcompress.models.detection import DetectorConfig, build_detector
from vitcompress.models.detection.source import save_detector
from vitcompress.train.schedule import warmup_cosine
from vitcompress.train.trainer import param_groups, step_indices
from vitcompress.validate import positive, positive_int

log = logging.getLogger(__name__)
STATE_FILE = "state.pt"


@dataclass(frozen=True)
class DetectorTrainRecipe:
    """Training of a reference detector on the scenes (2 epochs of 4,000 scenes: 2,000 steps of 4, about
    1.2 hours of one CPU thread).

    Attributes:
        epochs: passes over the train scenes
        batch_size: scenes per optimizer step
        lr: peak learning rate (after warm-up)
        min_lr: final learning rate of the cosine decay
        weight_decay: AdamW decoupled weight decay (not on biases and norms)
        warmup_steps: linear warm-up length, in steps
        grad_clip: max gradient norm (0 = off)
        checkpoint_every: steps between two checkpoints of the resumable state
        seed: seeds the initial weights and the batch order
    """

    epochs: int = 2
    batch_size: int = 4
    lr: float = 2e-4
    min_lr: float = 2e-6
    weight_decay: float = 0.05
    warmup_steps: int = 200
    grad_clip: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            positive_int(name, getattr(self, name))
        for name in ("lr", "min_lr"):
            positive(name, getattr(self, name))

    def total_steps(self, scenes: int) -> int:
        return self.epochs * (scenes // self.batch_size)


def _resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Load ``path`` (tensors and numbers only: ``weights_only``) into the model and optimizer; its step."""
    try:
        state = torch.load(path, map_location=model_device(model), weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"cannot resume from {path}: {str(e).splitlines()[0][:200]}") from None
    log.info("resumed at step %d from %s", state["step"], path)
    return int(state["step"])


def _save(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, tmp)


def _step(model: nn.Module, opt, train: Dataset, step: int, total: int, recipe: DetectorTrainRecipe) -> float:
    for group in opt.param_groups:
        group["lr"] = warmup_cosine(step, total, recipe.warmup_steps, recipe.lr, recipe.min_lr)
    idx = step_indices(step, len(train), recipe.batch_size, recipe.seed)
    torch.manual_seed(recipe.seed * 1_000_003 + step)  # the RPN/RoI samplers draw: the same draws after a resume
    images, targets = to_device(collate_detection([train[int(i)] for i in idx]), model_device(model))
    loss = sum(model(images, targets).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if recipe.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    return float(loss.detach())


def train_detector(
    config: DetectorConfig,
    train: Dataset,
    state_dir: str | Path,
    recipe: DetectorTrainRecipe | None = None,
    *,
    max_steps: int | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Train a detector of ``config`` on ``train`` (scenes with targets) with ``recipe``, resumably.

    Args:
        config: the detector.
        train: the train scenes (:func:`~vitcompress.data.scenes.load_scenes` ``("train")``, masks for Mask R-CNN).
        state_dir: the resumable state (``state.pt``) and, at the end, the model folder ``model/``.
        recipe: the schedule (default :class:`DetectorTrainRecipe`).
        max_steps: stop (with a checkpoint and a model folder ``model-step<N>``) after this global step, e.g. to
            run a long recipe in parts and evaluate it on the way.
        device: where to train (default: the CPU).

    Returns:
        The detector in eval mode (saved in ``state_dir/model`` when the recipe is complete, else in
        ``state_dir/model-step<N>``).
    """
    recipe = recipe or DetectorTrainRecipe()
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    model = build_detector(config).to(device or "cpu").train()
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr)
    path, total = state_dir / STATE_FILE, recipe.total_steps(len(train))
    start = _resume(path, model, opt) if path.is_file() else 0
    stop = total if max_steps is None else min(total, max_steps)
    t0, losses = time.perf_counter(), []
    for step in tqdm(range(start, stop), initial=start, total=stop, desc="train detector", mininterval=1.0):
        losses.append(_step(model, opt, train, step, total, recipe))
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == stop:
            _save(path, model, opt, step + 1)
    log.info("steps to %d of %d in %.0f s, mean loss %.3f", stop, total, time.perf_counter() - t0, _mean(losses))
    model.eval()
    if stop == total:
        save_detector(model, state_dir / "model")
        write_json(state_dir / "recipe.json", {"detector": config.as_dict(), "recipe": asdict(recipe), "steps": total})
    else:  # a part of the recipe: a model folder to evaluate it by
        save_detector(model, state_dir / f"model-step{stop}")
    return model


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """``python -m vitcompress.train.detection --backbone swin --state-dir runs/det/swin [--max-steps N]``."""
    import argparse

    from vitcompress.data.scenes import load_scenes

    p = argparse.ArgumentParser(description="train a reference detector on the scenes (resumable)")
    p.add_argument("--backbone", choices=("swin", "vit"), default="swin")
    p.add_argument("--head", default="mask_rcnn")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO)
    config = DetectorConfig(backbone=args.backbone, head=args.head)
    train = load_scenes("train", masks=config.head == "mask_rcnn")
    train_detector(config, train, args.state_dir, max_steps=args.max_steps, device=args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
