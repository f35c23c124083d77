"""``reconstruct_``: block reconstruction of a calibrated quantized model.

Each step of the model's chain (patch embedding, every transformer block, Swin's patch mergings, the final
norm with the classifier) is a unit, reconstructed in order, first to last (BRECQ: Li, Gong, Tan, Yang, Hu,
Zhang, Yu, Wang, Gu, "BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction", ICLR
2021, arXiv:2102.05426). For a unit, the AdaRound rounding of every weight (Nagel et al., ICML 2020,
arXiv:2004.10568) and the step size of every activation quantizer (LSQ, Esser et al., ICLR 2020,
arXiv:1902.08153) are learned with Adam to minimise the squared error between the unit's quantized output and
the float unit's output on the float model's input, the unit's input being taken from the quantized model
(already reconstructed up to there). QDrop (Wei, Gong, Li, Liu, Yu, "QDrop: Randomly Dropping Quantization for
Extremely Low-bit Post-Training Quantization", ICLR 2022, arXiv:2203.05740) mixes the float input into the
quantized one and lets each activation element skip quantization with probability ``drop_prob`` while learning.

Only the calibration images are used. Every tensor lives on the model's device. After each unit the changed
tensors are saved to the state file, so a killed run resumes at the next unit and ends exactly where an
uninterrupted run would (each unit draws from its own generator, seeded by the seed and the unit index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vitcompress.config import Reconstruction
from vitcompress.data.calib import first_batches
from vitcompress.device import model_device
from vitcompress.errors import StateError, UnsupportedModelError
from vitcompress.models.chain import Step, model_chain
from vitcompress.recon.adaround import AdaRound
from vitcompress.recon.state import fingerprints, load_state, save_state
from vitcompress.recon.units import Unit, dropped, find_units, frozen, learnable_scales, quantizers_off

log = logging.getLogger(__name__)

CHUNK = 64  # images per forward when a whole stream passes a step (no gradient)
PROBE = 256  # calibration images on which each unit's error is reported before and after
Callback = Callable[[dict[str, Any]], None]


@dataclass
class ReconResult:
    """What reconstruction did: per unit its name, what it learned and its output error before and after.

    ``units[i]``: ``name``, ``layers`` (weights rounded), ``scales`` (step sizes learned), ``mse_before``,
    ``mse_after`` (mean squared error to the float unit's output on the first calibration images), ``seconds``.
    """

    config: Reconstruction
    units: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "units": self.units, "seconds": self.seconds, "resumed": self.resumed}


@torch.no_grad()
def _run(step: Step, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([step(x[i : i + CHUNK]) for i in range(0, len(x), CHUNK)])


def _rec_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over tokens (or classes), averaged over images and channels."""
    err = (out - target).pow(2)
    return err.flatten(1, -2).sum(1).mean() if err.dim() > 2 else err.sum(1).mean()


def _beta(t: int, config: Reconstruction) -> float | None:
    """AdaRound's annealing exponent at step ``t``: None during the warm-up, then linear from start to end."""
    warm = config.warmup * config.iters
    if t < warm:
        return None
    rel = (t - warm) / max(1.0, config.iters - warm)
    return config.beta_end + (config.beta_start - config.beta_end) * max(0.0, 1.0 - rel)


@contextmanager
def _no_bias_correction(unit: Unit) -> Iterator[None]:
    """Bias correction off in the unit's layers while learning: the learned rounding takes its place."""
    saved = [(layer, getattr(layer, "bias_correction", False)) for _, layer in unit.layers]
    for layer, _ in saved:
        layer.bias_correction = False
    try:
        yield
    finally:
        for layer, flag in saved:
            layer.bias_correction = flag


class _Learner:
    """The optimisation of one unit: rounding variables, step sizes, batches and QDrop masks."""

    def __init__(self, unit: Unit, step: Step, config: Reconstruction, device: torch.device, seed: int):
        self.unit, self.step, self.config = unit, step, config
        self.batches = torch.Generator().manual_seed(seed)
        self.masks = torch.Generator(device=device).manual_seed(seed)

    def _input(self, x_q: torch.Tensor, x_fp: torch.Tensor) -> torch.Tensor:
        """QDrop at the unit's input: each element is the float model's with probability ``drop_prob``."""
        p = self.config.drop_prob
        if p <= 0:
            return x_q
        keep = torch.rand(x_q.shape, generator=self.masks, device=x_q.device) < p
        return torch.where(keep, x_fp, x_q)

    def learn(self, x_q: torch.Tensor, x_fp: torch.Tensor, y_fp: torch.Tensor, rounding: list[AdaRound]) -> None:
        cfg, n = self.config, len(x_q)
        with ExitStack() as stack:
            scales = stack.enter_context(learnable_scales(self.unit))
            stack.enter_context(dropped(self.unit, cfg.drop_prob, self.masks))
            opt_w = torch.optim.Adam([r.v for r in rounding], lr=cfg.weight_lr) if rounding else None
            # relative rate: a step size moves by about scale_lr of its own size per step, whatever its magnitude
            groups = [{"params": [s], "lr": cfg.scale_lr * float(s.detach().abs().mean())} for s in scales]
            opt_s = torch.optim.Adam(groups) if scales and cfg.scale_lr > 0 else None
            decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt_s, T_max=cfg.iters) if opt_s else None
            optimizers = [o for o in (opt_w, opt_s) if o is not None]
            for t in tqdm(range(cfg.iters), desc=f"reconstruct {self.unit.name}", leave=False):
                idx = torch.randint(n, (min(cfg.batch_size, n),), generator=self.batches).to(x_q.device)
                loss = _rec_loss(self.step(self._input(x_q[idx], x_fp[idx])), y_fp[idx])
                beta = _beta(t, cfg)
                if beta is not None and rounding:
                    loss = loss + cfg.round_weight * sum(r.regularizer(beta) for r in rounding)
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                for o in optimizers:
                    o.step()
                if decay is not None:
                    decay.step()


@torch.no_grad()
def _probe_error(step: Step, x_q: torch.Tensor, y_fp: torch.Tensor) -> float:
    return float((_run(step, x_q[:PROBE]) - y_fp[:PROBE]).pow(2).mean())


def _learn_unit(model: nn.Module, unit: Unit, step: Step, streams: tuple, config: Reconstruction) -> dict[str, Any]:
    """Reconstruct one unit in place; its summary."""
    x_q, x_fp, y_fp = streams
    t0 = time.perf_counter()
    before = _probe_error(step, x_q, y_fp)
    rounding = [AdaRound(layer) for _, layer in unit.layers]
    done = False
    try:
        # gradients on even when the caller quantizes inside torch.no_grad() (an inference script's habit)
        with frozen(model), _no_bias_correction(unit), torch.enable_grad():
            _Learner(unit, step, config, x_q.device, config.seed * 100_003 + unit.step).learn(x_q, x_fp, y_fp, rounding)
        done = True
    finally:
        for r in rounding:
            r.bake() if done else r.remove()
    after = _probe_error(step, x_q, y_fp)
    log.info("reconstructed %s: MSE %.3g -> %.3g (%.1f s)", unit.name, before, after, time.perf_counter() - t0)
    return {
        "name": unit.name,
        "layers": len(unit.layers),
        "scales": len(unit.scales),
        "mse_before": before,
        "mse_after": after,
        "seconds": time.perf_counter() - t0,
    }


def _images(calib: Any, device: torch.device) -> torch.Tensor:
    return torch.cat(first_batches(calib, None, CHUNK, device=device))


def _load_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    own = model.state_dict()
    for key, value in tensors.items():
        if key not in own or own[key].shape != value.shape:
            raise StateError(f"reconstruction state {path} does not fit this model ({key}); remove it to start over")
        own[key].copy_(value)


def _start(state_path: Path | None, resume: bool, prints: dict[str, str]) -> dict[str, Any] | None:
    """The saved state to continue, or None for a new run."""
    if state_path is None or not state_path.exists():
        if resume:
            log.info("reconstruction: no state at %s; starting a new run", state_path)
        return None
    if not resume:
        raise StateError(
            f"a reconstruction state exists at {state_path}: resume it (--resume / resume=True) or remove it "
            f"to start over"
        )
    return load_state(state_path, prints)


def reconstruct_(
    model: nn.Module,
    calib: Iterable | Any,
    config: Reconstruction | None = None,
    *,
    recipe: dict | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> ReconResult:
    """Reconstruct a calibrated quantized model in place, unit by unit (see the module docstring).

    Args:
        model: a timm ViT/DeiT or Swin after ``prepare`` and calibration (every scale set).
        calib: the calibration images (all are used): a Dataset, a loader or an iterable of batches.
        config: the settings (default :class:`~vitcompress.config.Reconstruction`).
        recipe: the recipe as a dict, part of the state's fingerprint.
        state_path: file for the resumable state, written atomically after every unit.
        resume: continue from ``state_path`` (StateError if it was written for another model, recipe or
            calibration set); without it an existing state is an error.
        callback: called with ``{"unit", "index", "mse_before", "mse_after"}`` after each unit's state is saved.

    Raises:
        UnsupportedModelError: a model that is not a timm ViT/DeiT or Swin (no block chain).
        StateError: the state at ``state_path`` is not this run's.
    """
    t0 = time.perf_counter()
    config = config or Reconstruction()
    device = model_device(model)
    model.eval()
    images = _images(calib, device)
    try:
        chain = model_chain(model, "logits", check=images[:CHUNK], distilled=True)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"block reconstruction: {e}") from None
    units = find_units(model, chain, images[:2])
    state_path = Path(state_path) if state_path is not None else None
    prints = fingerprints(model, recipe if recipe is not None else config.to_dict(), images)
    state = _start(state_path, resume, prints)
    result = ReconResult(config, resumed=state is not None)
    first = state["next_unit"] if state else 0
    x_fp = images
    with quantizers_off(model):  # the float stream up to the first unit to learn (weights not changed yet)
        for i in range(first):
            x_fp = _run(chain.steps[i], x_fp)
    tensors: dict[str, torch.Tensor] = {}
    if state:
        tensors, result.units = dict(state["tensors"]), list(state["history"])
        _load_tensors(model, tensors, state_path)
    x_q = images
    for i in range(first):
        x_q = _run(chain.steps[i], x_q)
    seconds_before = state["seconds"] if state else 0.0
    for unit in tqdm(units[first:], desc="reconstruct blocks", initial=first, total=len(units), leave=False):
        step = chain.steps[unit.step]
        with quantizers_off(model):
            y_fp = _run(step, x_fp)
        if unit.learns:
            result.units.append(_learn_unit(model, unit, step, (x_q, x_fp, y_fp), config))
            own = model.state_dict()
            tensors.update({k: own[k].detach().cpu().clone() for k in unit.state_keys()})
        x_q, x_fp = _run(step, x_q), y_fp
        result.seconds = seconds_before + time.perf_counter() - t0
        if state_path is not None:
            save_state(
                state_path,
                {
                    "fingerprints": prints,
                    "next_unit": unit.step + 1,
                    "tensors": tensors,
                    "history": result.units,
                    "seconds": result.seconds,
                },
            )
        if callback is not None and unit.learns:
            callback({"unit": unit.name, "index": unit.step, **result.units[-1]})
    result.seconds = seconds_before + time.perf_counter() - t0
    return result
