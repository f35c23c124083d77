"""``evolq_``: evolutionary search of a PTQ model's quantization scales.

Evol-Q: Frumkin, Gope, Marculescu, "Jumping through Local Minima: Quantization in the Loss Landscape
of Vision Transformers", ICCV 2023, arXiv:2308.10814.

Blocks are visited last to first (by default). For each block, a population of ``population``
copies of its current scales (the per-channel weight scales of ``attn.qkv`` and ``attn.proj``,
flattened together) goes through ``cycles`` tournaments: ``tournament`` members are drawn with
replacement, the fittest is the parent, the child is ``|parent + U(-r, r)|``; the child joins and
the worst member leaves. The block keeps the fittest member (the incumbent on ties), so the
calibration fitness never gets worse. ``passes`` sweeps over all blocks.

A candidate's fitness runs only the network from its block to the logits (the model as a chain of
steps, :mod:`vitcompress.models.chain`), on the block inputs cached from the quantized model at the
start of the pass (they do not change while the blocks behind are searched), against full-precision
logits cached once.

Work happens on the model's device. Under ``torchrun`` (:mod:`vitcompress.distributed`) each process
holds and runs its share of the calibration batches; the per-batch fitness values are gathered exactly,
so every process sees the same fitness as one process would and takes the same decisions (the random
stream is the same on every process, on the CPU). Only rank 0 writes the state; on resume it reads it
and sends it to the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from vitcompress import distributed
from vitcompress.data.calib import first_batches
from vitcompress.device import model_device, to_device
from vitcompress.errors import ConfigError, StateError
from vitcompress.eval.classification import check_input, evaluate
from vitcompress.methods.evolq.config import EvolQConfig
from vitcompress.methods.evolq.fitness import fitness_fn
from vitcompress.methods.evolq.state import fingerprints, load_state, save_state
from vitcompress.models.chain import Chain, model_chain
from vitcompress.nn.linear import QuantLinear
from vitcompress.quant import Quantizer
from vitcompress.quant.quantizer import UniformQuantizer
from vitcompress.quantize import recipe_of

log = logging.getLogger(__name__)

Callback = Callable[[dict[str, Any]], None]


@dataclass
class EvolQResult:
    """What a search found: the scales (a plan you can save and apply) and the per-pass history.

    ``history[0]`` is the PTQ starting point (pass 0); entry ``p`` holds the calibration fitness and,
    if evaluation data was given, the evaluation top-1 after pass ``p``.
    """

    scales: dict[str, torch.Tensor]
    history: list[dict[str, Any]]
    config: EvolQConfig
    evaluations: int = 0
    seconds: float = 0.0
    resumed: bool = False
    blocks: list[str] = field(default_factory=list)

    @property
    def fitness_before(self) -> float:
        return self.history[0]["fitness"]

    @property
    def fitness_after(self) -> float:
        return self.history[-1]["fitness"]

    def apply(self, model: nn.Module) -> None:
        """Set these scales on ``model`` (a model quantized with the same recipe)."""
        modules = dict(model.named_modules())
        for name, scale in self.scales.items():
            owner, point = name.rsplit(".", 1)
            qz = modules.get(f"{owner}.{point}_quantizer")
            if not isinstance(qz, UniformQuantizer) or qz.scale.shape != scale.shape:
                raise StateError(
                    f"Evol-Q scales do not fit this model: no quantizer {name} of shape {tuple(scale.shape)}"
                )
            with torch.no_grad():
                qz.scale.copy_(scale)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "config": self.config.to_dict(),
            "history": self.history,
            "fitness_before": self.fitness_before,
            "fitness_after": self.fitness_after,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "resumed": self.resumed,
            "blocks": self.blocks,
            "searched_scales": sum(t.numel() for t in self.scales.values()),
        }


@dataclass
class _Block:
    step: int  # index in the model's chain of steps
    name: str
    quantizers: list[tuple[str, UniformQuantizer]]
    widths: torch.Tensor  # (n,) mutation half-width of each searched scale value

    def get(self) -> torch.Tensor:
        return torch.cat([q.scale.detach().flatten() for _, q in self.quantizers])

    def set(self, values: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for _, q in self.quantizers:
                n = q.scale.numel()
                q.scale.copy_(values[offset : offset + n].reshape(q.scale.shape))
                offset += n


def _searchable(block: nn.Module, prefix: str, config: EvolQConfig) -> list[tuple[str, UniformQuantizer]]:
    found = []
    for target in config.targets:
        try:
            layer = block.get_submodule(target)
        except AttributeError:
            continue
        if not isinstance(layer, QuantLinear):
            continue
        points = [("weight", layer.weight_quantizer)]
        if config.search_activations:
            points.append(("input", layer.input_quantizer))
        for point, qz in points:
            if isinstance(qz, UniformQuantizer) and qz.active and qz.spec.granularity != "token":
                found.append((f"{prefix}.{target}.{point}", qz))
    return found


def _widths(quantizers: list[tuple[str, UniformQuantizer]], config: EvolQConfig) -> torch.Tensor:
    parts = []
    for _, q in quantizers:
        if q.spec.granularity == "group":
            parts.append(torch.tensor([config.mutation_width(int(b)) for b in q.group_bits.flatten().tolist()]))
        else:
            parts.append(torch.full((q.scale.numel(),), config.mutation_width(q.spec.bits)))
    return torch.cat(parts).float()


def _blocks(model: nn.Module, chain: Chain, config: EvolQConfig) -> list[_Block]:
    blocks = []
    for i in chain.block_steps():
        name = chain.names[i]
        qzs = _searchable(model.get_submodule(name), name, config)
        if qzs:
            blocks.append(_Block(i, name, qzs, _widths(qzs, config)))
        else:
            log.info("Evol-Q: block %s has no enabled uniform scales among %s; skipped", name, config.targets)
    if not blocks:
        raise ConfigError(
            f"targets {list(config.targets)} hold no enabled uniform weight quantizer in any block: "
            f"nothing for Evol-Q to search"
        )
    if config.block_order == "last_to_first":
        blocks.reverse()
    return blocks


def _calib_batches(calib: Any, config: EvolQConfig) -> list[torch.Tensor]:
    batches = first_batches(calib, config.calib_size, config.batch_size, what="calib_size")
    if config.fitness == "infonce":
        for i, x in enumerate(batches):
            if len(x) < 2:
                raise ConfigError(
                    f"infoNCE fitness needs at least 2 images per calibration batch (the other images "
                    f"are the negatives), but batch {i} has batch size {len(x)}; use a batch size "
                    f">= 2, a calib_size that leaves no single-image batch, or another fitness"
                )
    return batches


@torch.no_grad()
def _float_logits(model: nn.Module, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    quantizers = [m for m in model.modules() if isinstance(m, Quantizer)]
    saved = [q.enabled for q in quantizers]
    for q in quantizers:
        q.enabled = False  # disabled quantizers return their input: the float model, bit for bit
    try:
        return [model(x) for x in batches]
    finally:
        for q, was in zip(quantizers, saved):
            q.enabled = was


class _Search:
    """The state of one run: cached block inputs and float logits, the fitness, the random stream.

    ``batches`` are all calibration batches (on the CPU); this process keeps its share
    (:func:`vitcompress.distributed.shard`) on the model's device.
    """

    def __init__(self, model: nn.Module, config: EvolQConfig, batches: list[torch.Tensor]):
        device = model_device(model)
        self.model, self.config, self.n_batches = model, config, len(batches)
        self.shard = distributed.shard(len(batches))
        self.batches = [to_device(batches[i], device) for i in self.shard]
        # the logits as a chain of steps; checked bit for bit against model(x) on the first batch
        self.chain = model_chain(model, "logits", check=to_device(batches[0][:2], device), distilled=True)
        self.blocks = _blocks(model, self.chain, config)
        self.fn = fitness_fn(config.fitness, config.temperature)
        self.fp = _float_logits(model, self.batches)
        self.inputs: dict[int, list[torch.Tensor]] = {}
        self.generator = torch.Generator().manual_seed(config.seed)
        self.evaluations = 0
        self.bar: Any = None

    def progress(self, start_pass: int, start_block: int) -> Any:
        """The run's progress bar, counted in steps run on one batch (a block-to-logits forward from a late
        block counts less than one from an early block), so its ETA holds from the first batches on."""
        depth = [len(self.chain.steps) - b.step for b in self.blocks]
        nb, cycles = len(self.batches), self.config.cycles
        per_pass = nb * (len(self.chain.steps) + cycles * sum(depth))
        done = start_pass * per_pass + nb * cycles * sum(depth[:start_block])
        total = self.config.passes * per_pass
        self.bar = tqdm(
            total=total,
            initial=min(done, total),
            desc="evolq",
            unit="step",
            leave=False,
            **distributed.progress_kwargs(),
        )
        return self.bar

    def _tick(self, steps: int) -> None:
        if self.bar is not None:
            self.bar.update(steps)

    def _mean(self, values: list[torch.Tensor]) -> float:
        """The mean over all batches of the fitness values of this process's batches (one device sync),
        summed in batch order: the same float in one process and on every rank of many."""
        local = torch.stack(values).double().cpu().tolist() if values else []
        gathered = distributed.gather_values(dict(zip(self.shard, local)), self.n_batches)
        return distributed.sum_in_order(gathered) / self.n_batches

    @torch.no_grad()
    def cache_inputs(self) -> float:
        """Run the quantized model once, keep every block's inputs; return its fitness."""
        wanted = {b.step for b in self.blocks}
        self.inputs = {i: [] for i in wanted}
        values = []
        for x, z_fp in zip(self.batches, self.fp):
            for i, step in enumerate(self.chain.steps):
                if i in wanted:
                    self.inputs[i].append(x)
                x = step(x)
            values.append(self.fn(x, z_fp))
            self._tick(len(self.chain.steps))
        return self._mean(values)

    @torch.no_grad()
    def fitness_from(self, step: int) -> float:
        """Fitness of the current model, running only steps ``step..end`` on the cached inputs."""
        self.evaluations += 1
        values = []
        for x, z_fp in zip(self.inputs[step], self.fp):
            values.append(self.fn(self.chain.run(x, step), z_fp))
            self._tick(len(self.chain.steps) - step)
        return self._mean(values)

    @torch.no_grad()
    def advance_inputs(self, k: int) -> None:
        """After block ``k`` changed (first-to-last order), recompute the inputs of block ``k + 1``."""
        if k + 1 >= len(self.blocks):
            return
        start, stop = self.blocks[k].step, self.blocks[k + 1].step
        self.inputs[stop] = [self.chain.run(x, start, stop) for x in self.inputs[start]]

    def mutate(self, parent: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        # drawn on the CPU: the same stream on every device and every rank
        noise = ((torch.rand(parent.shape, generator=self.generator) * 2 - 1) * widths).to(parent.device)  # U(-r, r)
        child = parent * (1 + noise) if self.config.mutation_mode == "relative" else parent + noise
        # |.| as in the paper; a scale of exactly 0 would divide by zero in fake quantization
        return child.abs().clamp_min(torch.finfo(torch.float32).tiny)

    def search_block(self, block: _Block, fitness: float) -> float:
        """The tournament search of one block; leaves the fittest scales set and returns its fitness."""
        cfg = self.config
        population = [(block.get(), fitness)] * cfg.population
        for _ in range(cfg.cycles):
            drawn = torch.randint(len(population), (cfg.tournament,), generator=self.generator).tolist()
            parent = min((population[i] for i in drawn), key=lambda m: m[1])
            child = self.mutate(parent[0], block.widths)
            block.set(child)
            population.append((child, self.fitness_from(block.step)))
            worst = max(range(len(population)), key=lambda i: (population[i][1], i))
            population.pop(worst)
        best = min(population, key=lambda m: m[1])  # first of the ties: the incumbent when nothing improved
        block.set(best[0])
        return best[1]


def _scales(search: _Search) -> dict[str, torch.Tensor]:
    return {name: q.scale.detach().cpu().clone() for b in search.blocks for name, q in b.quantizers}


def _top1(model: nn.Module, eval_data: Any) -> float | None:
    """Evaluation top-1 (rank 0 evaluates, every rank gets it: the histories are the same)."""
    return None if eval_data is None else distributed.main_decides(lambda: evaluate(model, eval_data).top1)


def _read_state(state_path: Path | None, resume: bool, prints: dict[str, str]) -> dict[str, Any] | None:
    """The saved state to resume (None: a new run)."""
    if state_path is None or not state_path.exists():
        if resume:
            log.info("Evol-Q: no state at %s; starting a new run", state_path)
        return None
    if not resume:
        raise StateError(
            f"an Evol-Q state exists at {state_path}: resume it (--resume / resume=True) or remove it to start over"
        )
    return load_state(state_path, prints)


def _start(search: _Search, state_path: Path | None, resume: bool, prints: dict[str, str]) -> tuple:
    """``(pass, block, fitness, history, seconds)`` to start from: a saved state's, or a new run's.

    Rank 0 reads the state; every rank starts from it."""
    state = distributed.main_decides(lambda: _read_state(state_path, resume, prints))
    if state is None:
        return 0, 0, None, [], 0.0
    _restore(search, state)
    search.evaluations = state["evaluations"]
    log.info(
        "Evol-Q: resuming %s at pass %d, block %d of %d",
        state_path,
        state["next_pass"] + 1,
        state["next_block"] + 1,
        len(search.blocks),
    )
    return state["next_pass"], state["next_block"], state["fitness"], state["history"], state["seconds"]


def evolq_(
    model: nn.Module,
    calib: Dataset | DataLoader | Iterable,
    config: EvolQConfig | None = None,
    *,
    eval_data: Dataset | DataLoader | Iterable | None = None,
    state_path: str | Path | None = None,
    resume: bool = False,
    callback: Callback | None = None,
) -> EvolQResult:
    """Refine the scales of a PTQ model in place with Evol-Q; return the scales and the history.

    Args:
        model: a model quantized with :func:`vitcompress.quantize.quantize_` (StateError otherwise);
            ``config.recipe`` is not used here (see :func:`vitcompress.compress_` for PTQ + Evol-Q).
        calib: calibration images; the first ``config.calib_size`` are used, in batches of
            ``config.batch_size`` (a Dataset) or as given (a loader or an iterable of batches).
        config: the search settings (default :class:`EvolQConfig`).
        eval_data: optional evaluation data (cut it to evaluate on fewer images, e.g. with
            ``torch.utils.data.Subset``); its top-1 is logged after every pass and kept in the
            history. It never influences the search (selection uses the calibration fitness only).
        state_path: file for the resumable state, written atomically after every block.
        resume: continue from ``state_path`` (StateError if it was written for another model,
            recipe, PTQ result, calibration set or config). Without ``resume`` an existing state is an
            error, so no run is overwritten by accident.
        callback: called with ``{"pass", "block", "fitness"}`` after each block's state is saved (on every
            rank under ``torchrun``, with the same values).

    Raises:
        StateError: the model is not quantized, or the state at ``state_path`` is not this run's.
        ConfigError: no block holds a searchable quantizer, or an infoNCE batch of one image.
        UnsupportedModelError: not a timm ViT/DeiT or Swin.
    """
    t0 = time.perf_counter()
    config = config or EvolQConfig()
    recipe = recipe_of(model)  # StateError "run quantize_ (PTQ) first" for a float model
    distributed.init_from_env()
    model.eval()
    batches = _calib_batches(calib, config)  # all of them, on the CPU: every rank fingerprints the same
    check_input(model, batches[0])
    prints = fingerprints(model, recipe.to_dict(), config.search_dict(), batches)
    search = _Search(model, config, batches)
    del batches
    state_path = Path(state_path) if state_path is not None else None
    start_pass, start_block, fitness, history, seconds_before = _start(search, state_path, resume, prints)
    resumed = bool(history)

    def save(next_pass: int, next_block: int) -> None:
        if state_path is None or not distributed.is_main():
            return
        save_state(
            state_path,
            {
                "fingerprints": prints,
                "next_pass": next_pass,
                "next_block": next_block,
                "fitness": fitness,
                "history": history,
                "scales": _scales(search),
                "generator": search.generator.get_state(),
                "evaluations": search.evaluations,
                "seconds": seconds_before + time.perf_counter() - t0,
            },
        )

    n = len(search.blocks)
    bar = search.progress(start_pass, start_block)
    cached = not history  # a new run: the PTQ fitness pass below caches the first pass's block inputs
    if cached:
        fitness = search.cache_inputs()
        history.append({"pass": 0, "fitness": fitness, "top1": _top1(model, eval_data), "seconds": 0.0})
        log.info("Evol-Q start (PTQ): fitness %.6f%s", fitness, _fmt_top1(history[0]["top1"]))
    try:
        for p in range(start_pass, config.passes):
            first = start_block if p == start_pass else 0
            if first < n and not (cached and p == start_pass):
                recomputed = search.cache_inputs()
                fitness = recomputed if first == 0 else fitness  # mid-pass: keep the saved (equal) value
            for k in range(first, n):
                fitness = search.search_block(search.blocks[k], fitness)
                if config.block_order == "first_to_last":
                    search.advance_inputs(k)
                save(p, k + 1)
                bar.set_postfix(pass_=p + 1, fitness=f"{fitness:.5f}")
                if callback is not None:
                    callback({"pass": p + 1, "block": search.blocks[k].name, "fitness": fitness})
            top1 = _top1(model, eval_data)
            history.append(
                {"pass": p + 1, "fitness": fitness, "top1": top1, "seconds": seconds_before + time.perf_counter() - t0}
            )
            log.info(
                "Evol-Q pass %d/%d: fitness %.6f%s (%.1f s)",
                p + 1,
                config.passes,
                fitness,
                _fmt_top1(top1),
                history[-1]["seconds"],
            )
            save(p + 1, 0)
    finally:
        bar.close()
    return EvolQResult(
        scales=_scales(search),
        history=history,
        config=config,
        evaluations=search.evaluations,
        seconds=seconds_before + time.perf_counter() - t0,
        resumed=resumed,
        blocks=[b.name for b in search.blocks],
    )


def _restore(search: _Search, state: dict[str, Any]) -> None:
    scales = state["scales"]
    for block in search.blocks:
        for name, q in block.quantizers:
            if name not in scales or scales[name].shape != q.scale.shape:
                raise StateError(f"Evol-Q state has no scales of shape {tuple(q.scale.shape)} for {name}")
            with torch.no_grad():
                q.scale.copy_(scales[name])
    search.generator.set_state(state["generator"])


def _fmt_top1(top1: float | None) -> str:
    return "" if top1 is None else f", eval top-1 {top1:.2f} %"
