"""Supervised training of a classifier with epoch checkpoints and exact resume.

Every epoch's shuffle order and augmentation stream are seeded from (seed, epoch), so resuming
from the checkpoint of epoch k gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vitcompress.data.datasets import make_loader
from vitcompress.io import atomic_path
from vitcompress.models.zoo import TrainRecipe
from vitcompress.train.schedule import warmup_cosine
from vitcompress.train.trainer import param_groups

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


def _save_state(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int, seconds: float) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": torch.tensor(epoch), "seconds": torch.tensor(seconds)}, tmp)


def train_classifier(model: nn.Module, train_set: Dataset, recipe: TrainRecipe, state_dir: str | Path,
                     resume: bool = True) -> dict:
    """Train ``model`` in place on ``train_set`` following ``recipe``.

    Args:
        state_dir: folder of the resumable state (written atomically after every epoch).
        resume: continue from ``state_dir/train_state.pt`` when it exists.

    Returns:
        ``{"epochs": int, "seconds": float, "final_loss": float}``.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_dir / STATE_FILE
    torch.manual_seed(recipe.seed)
    opt = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr)
    start_epoch, seconds = 0, 0.0
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, seconds = int(state["epoch"]), float(state["seconds"])
        log.info("resuming from %s at epoch %d", state_path, start_epoch)
    steps_per_epoch = -(-len(train_set) // recipe.batch_size)
    total, warmup = recipe.epochs * steps_per_epoch, int(recipe.warmup_epochs * steps_per_epoch)
    loss_value = float("nan")
    for epoch in range(start_epoch, recipe.epochs):
        t0 = time.perf_counter()
        model.train()
        if hasattr(train_set, "generator"):  # the augmentation stream, seeded per epoch
            train_set.generator.manual_seed(recipe.seed * 100_003 + epoch)
        loader = make_loader(train_set, recipe.batch_size, shuffle=True, seed=recipe.seed * 1_000 + epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False, mininterval=2.0)
        running = 0.0
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, recipe.lr, recipe.min_lr)
            loss = F.cross_entropy(model(x), y, label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if recipe.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
            opt.step()
            running = 0.98 * running + 0.02 * loss.item() if i else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        loss_value = running
        seconds += time.perf_counter() - t0
        _save_state(state_path, model, opt, epoch + 1, seconds)
        log.info("epoch %d/%d: train loss %.4f, %.0f s so far", epoch + 1, recipe.epochs, loss_value, seconds)
    model.eval()
    return {"epochs": recipe.epochs, "seconds": seconds, "final_loss": loss_value}
