"""``EvolQConfig``: every knob of the Evol-Q search (METHODS §1, seed 002), frozen and validated."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from vitcompress.errors import ConfigError

FITNESSES = ("infonce", "mse", "cosine", "kl")
BLOCK_ORDERS = ("last_to_first", "first_to_last")
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # linear layers of a block, by path in the block
MUTATION_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class EvolQConfig:
    """How Evol-Q searches the quantization scales of a PTQ model.

    Attributes:
        passes: P, sweeps over all blocks (seed 002: 10; most of the gain comes in the first 10).
        cycles: C, children per block per pass (seed 002: 3; the best C is seed dependent).
        population: members of the per-block population, all initialised to the current scales (15).
        tournament: members drawn (with replacement) per cycle; the fittest is the parent (10).
        mutation_low_bits: half-width ``r`` of the uniform mutation for scales of quantizers with at
            most 4 bits (seed 002: 1e-3 for 3/4-bit).
        mutation_high_bits: ``r`` for 5 to 16 bits (seed 002 gives 1e-4 for 8-bit; we use it for 5-7 too).
        mutation_mode: ``absolute`` (child = |parent + U(-r, r)|, ``r`` in scale units, the default) or
            ``relative`` (child = |parent·(1 + U(-r, r))|).
        fitness: ``infonce`` (default, METHODS §1.2), ``mse``, ``cosine`` or ``kl``, on the logits.
        temperature: T of the infoNCE fitness (3.0).
        block_order: ``last_to_first`` (the seed's) or ``first_to_last``.
        targets: linear layers of each block whose per-channel weight scales are searched (default
            ``attn.qkv`` and ``attn.proj``; allowed also ``mlp.fc1``, ``mlp.fc2``).
        search_activations: also search the per-tensor input (activation) scales of the targets.
        calib_size: calibration images used (the first ``calib_size`` of the data passed; 1,000).
        batch_size: images per fitness batch; for infoNCE the other images of a batch are the negatives.
        seed: seed of the search's random generator (tournaments and mutations).
    """

    passes: int = 10
    cycles: int = 3
    population: int = 15
    tournament: int = 10
    mutation_low_bits: float = 1e-3
    mutation_high_bits: float = 1e-4
    mutation_mode: str = "absolute"
    fitness: str = "infonce"
    temperature: float = 3.0
    block_order: str = "last_to_first"
    targets: tuple[str, ...] = ("attn.qkv", "attn.proj")
    search_activations: bool = False
    calib_size: int = 1000
    batch_size: int = 64
    seed: int = 0
    version: int = 1

    def __post_init__(self) -> None:
        for name in ("passes", "cycles", "population", "tournament", "calib_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("mutation_low_bits", "mutation_high_bits", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        _one_of("fitness", self.fitness, FITNESSES)
        _one_of("block_order", self.block_order, BLOCK_ORDERS)
        _one_of("mutation_mode", self.mutation_mode, MUTATION_MODES)
        targets = tuple(self.targets) if isinstance(self.targets, (list, tuple)) else self.targets
        if not isinstance(targets, tuple) or not targets or len(set(targets)) != len(targets):
            raise ConfigError(f"targets must be a non-empty list of distinct layers from {list(TARGETS)}, "
                              f"got {self.targets!r}")
        for t in targets:
            _one_of("targets", t, TARGETS)
        object.__setattr__(self, "targets", targets)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.version != 1:
            raise ConfigError(f"version must be one of [1], got {self.version!r}")

    def mutation_width(self, bits: int) -> float:
        """Half-width ``r`` of the uniform mutation for a quantizer of ``bits`` bits."""
        return self.mutation_low_bits if bits <= 4 else self.mutation_high_bits

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return {"type": "vitcompress.EvolQConfig", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvolQConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"evolq config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)} | {"type"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"evolq config has unknown key {unknown[0]!r}; allowed keys: {sorted(known)}")
        if d.get("type", "vitcompress.EvolQConfig") != "vitcompress.EvolQConfig":
            raise ConfigError(f"type must be 'vitcompress.EvolQConfig', got {d.get('type')!r}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        if "targets" in kwargs and isinstance(kwargs["targets"], list):
            kwargs["targets"] = tuple(kwargs["targets"])
        return cls(**kwargs)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
