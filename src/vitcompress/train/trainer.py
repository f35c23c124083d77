"""The one training loop of the toolkit: model + loss function + dataset + :class:`TrainConfig`, resumable.

Reference-model training (``train/zoo.py``), distillation, quantization-aware training and fine-tuning
all run through it; ``loss_fn(model, x, y) -> (loss, logs)`` is all it knows about the task.

- AdamW (no weight decay on biases, norms, embeddings and 1-D quantizer scales), linear warm-up then
  cosine (:func:`warmup_cosine`), gradient-norm clipping.
- Step-indexed determinism: the batch of step ``s`` and every random draw inside it (drop-path,
  augmentation) are seeded from ``(seed, s)``, so resuming from a checkpoint at step ``k`` continues
  exactly as an uninterrupted run would.
- Checkpoints every ``checkpoint_every`` steps, at the end, and on SIGTERM (then returns with
  ``interrupted=True``); ``resume=True`` continues from ``state_dir/trainer_state.pt``.
- Distributed data parallel under ``torchrun`` (gloo on CPU, nccl on CUDA): the global batch of a step
  is split into equal contiguous shards, one per rank, and DDP averages the gradients; with the same
  global batch it computes what one process computes (up to float summation order).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from vitcompress import distributed
from vitcompress.data.datasets import check_labels, model_classes
from vitcompress.device import model_device, to_device
from vitcompress.errors import ConfigError, DataError, StateError, VitCompressError, first_line
from vitcompress.io import atomic_path
from vitcompress.models.checkpoint import load_error
from vitcompress.train.schedule import warmup_cosine
from vitcompress.validate import integer, number, positive, positive_int

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
STATE_KEYS = frozenset({"model", "optimizer", "step", "seconds", "history"})
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]]


class TrainingInterrupted(VitCompressError):
    """A run stopped on SIGTERM after saving its state; rerun with resume to continue."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one training run.

    Attributes:
        steps: optimizer steps.
        batch_size: global batch (split across ranks under DDP; must divide by the world size).
        lr, min_lr: peak and final learning rate of the cosine schedule.
        weight_decay: AdamW decoupled weight decay (matrices only).
        warmup_steps: linear warm-up steps.
        grad_clip: max gradient norm (0 = off).
        seed: seeds the batch order and the per-step random streams.
        checkpoint_every: save the state every N steps (0 = only at the end and on SIGTERM).
        log_every: steps between history entries (mean of the logged losses).
        find_unused_parameters: passed to DDP (modules whose parameters some steps do not use).
    """

    steps: int
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_steps: int = 0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            positive_int(name, getattr(self, name))
        integer("warmup_steps", self.warmup_steps, minimum=0)
        integer("checkpoint_every", self.checkpoint_every, minimum=0)
        integer("seed", self.seed)
        positive("lr", self.lr)
        for name in ("min_lr", "weight_decay", "grad_clip"):
            number(name, getattr(self, name), low=0)


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``; initialises the process group under torchrun (``WORLD_SIZE`` > 1)."""
    distributed.init_from_env()  # one GPU per process: "cuda" means this rank's from here on
    return distributed.rank(), distributed.world_size()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, position embeddings, tokens and quantizer scales (ndim <= 1)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "dist_token")) or "bias_table" in name
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _augment_generators(dataset: Dataset) -> list[torch.Generator]:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    g = getattr(dataset, "generator", None)
    return [g] if isinstance(g, torch.Generator) else []


def step_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """The global batch of ``step``: a slice of the seeded permutation of its epoch (last partial batch dropped)."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ConfigError(f"batch_size {batch_size} exceeds the dataset size {n}")
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[i * batch_size : (i + 1) * batch_size]


def _batch(dataset: Dataset, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[int(i)] for i in idx]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


class _Sigterm:
    """Records a SIGTERM instead of dying, so the loop can checkpoint first (main thread only)."""

    def __init__(self):
        self.received, self._previous = False, None

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not the main thread: no handler, no graceful stop
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.received = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _collective_device(model: nn.Module) -> torch.device:
    """Where a tensor for a collective lives: NCCL reduces device tensors only, gloo host ones."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return model_device(model)
    return torch.device("cpu")


def _any_rank(flag: bool, world: int, device: torch.device | None = None) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _mean_logs(logs: list[dict], world: int, device: torch.device | None = None) -> dict[str, float]:
    keys = sorted(logs[0])
    t = torch.tensor([[float(d[k]) for k in keys] for d in logs], dtype=torch.float64, device=device).mean(0)
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return dict(zip(keys, t.tolist()))


def _save(
    path: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    step: int,
    seconds: float,
    history: list,
    config: TrainConfig,
) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "seconds": seconds,
                "history": history,
                "config": asdict(config),
            },
            tmp,
        )


class _Loop:
    """The state of one run (optimizer, clocks, history) and its parts: resume, one step, log, checkpoint."""

    def __init__(
        self, model: nn.Module, dataset: Dataset, config: TrainConfig, state_dir: str | Path | None, desc: str
    ):
        self.rank, self.world = init_distributed()
        if config.batch_size % self.world:
            raise ConfigError(f"batch_size {config.batch_size} must be a multiple of the world size {self.world}")
        self.model, self.dataset, self.config, self.desc = model, dataset, config, desc
        self.state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
        self.opt = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr)
        self.start, self.seconds, self.history, self.window = 0, 0.0, [], []
        self.gens = _augment_generators(dataset)
        self.net = model
        self.device, self.reduce_on = model_device(model), _collective_device(model)

    def resume(self) -> None:
        """Load ``trainer_state.pt`` when present.

        Raises:
            StateError: one line naming the file: unreadable or corrupt, not a trainer state, or written for
                another model or optimizer.
        """
        path = self.state_path
        if path is None or not path.is_file():
            return
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, pickled objects, not a torch file at all
            raise StateError(f"cannot read trainer state {path}: {load_error(e)}; remove it to start over") from None
        if not isinstance(state, dict) or not set(state) >= STATE_KEYS:
            raise StateError(f"{path} is not a trainer state (keys {sorted(STATE_KEYS)}); remove it to start over")
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.start, self.seconds = int(state["step"]), float(state["seconds"])
            self.history = list(state["history"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise StateError(
                f"trainer state {path} does not fit this run ({first_line(e)}); resume only the same run, "
                "or remove it to start over"
            ) from None
        log.info("resuming %s from %s at step %d", self.desc, path, self.start)

    def wrap_ddp(self) -> None:
        if self.world > 1:
            with warnings.catch_warnings():  # broadcast_buffers: buffers (masks, quantizer state) never change here
                warnings.simplefilter("ignore", FutureWarning)
                self.net = nn.parallel.DistributedDataParallel(
                    self.model, broadcast_buffers=False, find_unused_parameters=self.config.find_unused_parameters
                )

    def step(self, step: int, loss_fn: LossFn, after_backward: Callable[[nn.Module], None] | None) -> None:
        """One optimizer step; every random draw in it is seeded from ``(seed, step, rank)``."""
        cfg, t0 = self.config, time.perf_counter()
        stream = (cfg.seed * 1_000_003 + step) * 64 + self.rank  # every draw of this step: drop-path, augment
        torch.manual_seed(stream)
        for g in self.gens:
            g.manual_seed(stream)
        idx = step_indices(step, len(self.dataset), cfg.batch_size, cfg.seed)
        shard = idx.view(self.world, -1)[self.rank]  # (batch / world,) contiguous shards
        x, y = _batch(self.dataset, shard)
        self.check_batch(step, shard, x, y)
        x, y = to_device((x, y), self.device)  # built on the CPU, trained on the model's device
        lr = warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.lr, cfg.min_lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss, logs = loss_fn(self.net, x, y)
        if _any_rank(not bool(torch.isfinite(loss.detach()).all()), self.world, self.reduce_on):
            raise DataError(
                f"{self.desc}: the loss is NaN or Inf at step {step}: the training diverged (try a lower lr than "
                f"{cfg.lr:g}) or a weight is not finite; the last saved state is kept"
            )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if after_backward is not None:
            after_backward(self.model)
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.seconds += time.perf_counter() - t0
        self.window.append(logs)

    def check_batch(self, step: int, shard: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """The batch of ``step`` has finite pixels and labels in the model's classes (DataError naming an item)."""
        where = f"{self.desc}: training batch of step {step}"
        if not bool(torch.isfinite(x).all()):
            row = int((~torch.isfinite(x)).flatten(1).any(1).nonzero()[0, 0])
            raise DataError(f"{where}: dataset item {int(shard[row])} holds NaN or Inf pixel values")
        check_labels(y, model_classes(self.model), where)

    def record(self, done: int, bar) -> None:
        """Close the log window every ``log_every`` steps and at the end."""
        cfg = self.config
        if done % cfg.log_every and done != cfg.steps:
            return
        means = _mean_logs(self.window, self.world, self.reduce_on)
        self.history.append({"step": done, **means})
        self.window = []
        bar.set_postfix({k: f"{v:.3g}" for k, v in means.items()}, refresh=False)
        if self.rank == 0 and done % (10 * cfg.log_every) == 0:
            log.info(
                "%s: step %d/%d %s (%.0f s)",
                self.desc,
                done,
                cfg.steps,
                " ".join(f"{k}={v:.4g}" for k, v in means.items()),
                self.seconds,
            )

    def checkpoint(self, done: int, stop: bool) -> None:
        """Save the state on a stop, at the end and every ``checkpoint_every`` steps (rank 0 writes)."""
        every = self.config.checkpoint_every
        if self.state_path is None or not (stop or done == self.config.steps or (every and done % every == 0)):
            return
        if self.rank == 0:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            _save(self.state_path, self.model, self.opt, done, self.seconds, self.history, self.config)
        if self.world > 1:
            dist.barrier()


def train(
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Dataset,
    config: TrainConfig,
    state_dir: str | Path | None = None,
    resume: bool = False,
    after_backward: Callable[[nn.Module], None] | None = None,
    desc: str = "train",
) -> dict:
    """Train ``model`` in place for ``config.steps`` steps.

    Args:
        model: the module to train (wrapped in DDP here when a process group is initialised).
        loss_fn: ``loss_fn(model, x, y) -> (loss, logs)``, ``logs`` a dict of floats to report.
        dataset: items ``(image, label)``; batches are built per step (see :func:`step_indices`).
        config: the :class:`TrainConfig`.
        state_dir: where checkpoints go (None: no checkpoints, no resume).
        resume: continue from ``state_dir/trainer_state.pt`` if present.
        after_backward: called with the plain model after the gradients are averaged, before clipping
            (e.g. :func:`vitcompress.sparsity.mask_gradients_`).
        desc: the progress bar's label (bars are switched off globally with ``TQDM_DISABLE=1``).

    Returns:
        ``{"steps", "seconds", "interrupted", "final": {loss means of the last log window},
        "history": [{"step": s, **means}, ...]}``.
    """
    run = _Loop(model, dataset, config, state_dir, desc)
    if resume:
        run.resume()
    run.wrap_ddp()
    interrupted, done = False, run.start
    model.train()
    quiet = {"disable": True} if run.rank != 0 else {}  # one bar under DDP; otherwise TQDM_DISABLE decides
    bar = tqdm(
        range(run.start, config.steps), desc=desc, mininterval=5.0, initial=run.start, total=config.steps, **quiet
    )
    with _Sigterm() as sigterm:
        for step in bar:
            run.step(step, loss_fn, after_backward)
            done = step + 1
            run.record(done, bar)
            stop = _any_rank(sigterm.received, run.world, run.reduce_on)
            run.checkpoint(done, stop)
            if stop:
                interrupted = True
                log.warning("%s: SIGTERM at step %d; state saved to %s", desc, done, run.state_path)
                break
    bar.close()
    model.eval()
    history = run.history
    final = {k: v for k, v in history[-1].items() if k != "step"} if history else {}
    return {"steps": done, "seconds": run.seconds, "interrupted": interrupted, "final": final, "history": history}
