"""``EvolQConfig``: every knob of Evol-Q, frozen and validated.

Evol-Q: Frumkin, Gope, Marculescu, "Jumping through Local Minima: Quantization in the Loss Landscape
of Vision Transformers", ICCV 2023, arXiv:2308.10814. The defaults are the paper's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from vitcompress.config import Recipe, resolve_recipe
from vitcompress.errors import ConfigError
from vitcompress.options import option
from vitcompress.validate import integer, known_keys, one_of, positive, positive_int, version

FITNESSES = ("infonce", "mse", "cosine", "kl")
BLOCK_ORDERS = ("last_to_first", "first_to_last")
TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # linear layers of a block, by path in the block
MUTATION_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class EvolQConfig:
    """How Evol-Q searches the quantization scales of a PTQ model.

    Attributes:
        recipe: post-training quantization applied first when the model is float (a preset name or a
            YAML/JSON recipe file on the command line); required for a float model, unused for a model
            quantized already
        passes: P, sweeps over all blocks (the paper: 10; most of the gain comes in the first 10)
        cycles: C, children per block per pass (the paper: 3; the best C depends on the seed)
        population: members of the per-block population, all initialised to the current scales
        tournament: members drawn (with replacement) per cycle; the fittest is the parent
        mutation_low_bits: half-width r of the uniform mutation for scales of quantizers with at most
            4 bits (the paper: 1e-3 for 3/4-bit)
        mutation_high_bits: r for 5 to 16 bits (the paper gives 1e-4 for 8-bit; used for 5-7 bits too)
        mutation_mode: absolute (child = |parent + U(-r, r)|, r in scale units) or relative
            (child = |parent·(1 + U(-r, r))|)
        fitness: infonce (the paper's), mse, cosine or kl, on the logits against the float logits
        temperature: T of the infoNCE fitness
        block_order: last_to_first (the paper's) or first_to_last
        targets: linear layers of each block whose per-channel weight scales are searched, among
            attn.qkv, attn.proj, mlp.fc1, mlp.fc2
        search_activations: also search the per-tensor input (activation) scales of the targets
        calib_size: calibration images used (the first calib_size of the data passed)
        batch_size: images per fitness batch; for infoNCE the other images of a batch are the negatives
        seed: seed of the search's random generator (tournaments and mutations)
        version: format version of the config
    """

    recipe: Recipe | None = option(None, parse=resolve_recipe, metavar="NAME|FILE")
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
    version: int = option(1, cli=False)

    def __post_init__(self) -> None:
        if self.recipe is not None and not isinstance(self.recipe, Recipe):
            raise ConfigError(f"recipe must be a Recipe or None, got {type(self.recipe).__name__}")
        for name in ("passes", "cycles", "population", "tournament", "calib_size", "batch_size"):
            positive_int(name, getattr(self, name))
        for name in ("mutation_low_bits", "mutation_high_bits", "temperature"):
            positive(name, getattr(self, name))
        one_of("fitness", self.fitness, FITNESSES)
        one_of("block_order", self.block_order, BLOCK_ORDERS)
        one_of("mutation_mode", self.mutation_mode, MUTATION_MODES)
        targets = tuple(self.targets) if isinstance(self.targets, (list, tuple)) else self.targets
        if not isinstance(targets, tuple) or not targets or len(set(targets)) != len(targets):
            raise ConfigError(
                f"targets must be a non-empty list of distinct layers from {list(TARGETS)}, got {self.targets!r}"
            )
        for t in targets:
            one_of("targets", t, TARGETS)
        object.__setattr__(self, "targets", targets)
        integer("seed", self.seed)
        version("EvolQConfig", self.version)

    def mutation_width(self, bits: int) -> float:
        """Half-width ``r`` of the uniform mutation for a quantizer of ``bits`` bits."""
        return self.mutation_low_bits if bits <= 4 else self.mutation_high_bits

    def search_dict(self) -> dict[str, Any]:
        """The search settings as a dict: :meth:`to_dict` without the PTQ recipe.

        This is what a resumable state fingerprints as "the config" (the recipe is fingerprinted
        separately, from the model), so states written before the recipe joined the config resume.
        """
        d = self.to_dict()
        d.pop("recipe")
        return d

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["recipe"] = None if self.recipe is None else self.recipe.to_dict()
        d["targets"] = list(self.targets)
        return {"type": "vitcompress.EvolQConfig", **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvolQConfig:
        """The config :meth:`to_dict` wrote (``recipe`` may be missing: configs written before it existed)."""
        known_keys("evolq config", d, [f.name for f in fields(cls)] + ["type"])
        if d.get("type", "vitcompress.EvolQConfig") != "vitcompress.EvolQConfig":
            raise ConfigError(f"type must be 'vitcompress.EvolQConfig', got {d.get('type')!r}")
        kwargs = {k: v for k, v in d.items() if k != "type"}
        if "targets" in kwargs and isinstance(kwargs["targets"], list):
            kwargs["targets"] = tuple(kwargs["targets"])
        if isinstance(kwargs.get("recipe"), dict):
            kwargs["recipe"] = Recipe.from_dict(kwargs["recipe"])
        return cls(**kwargs)
