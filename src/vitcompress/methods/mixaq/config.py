"""``MixAQConfig``: what :func:`vitcompress.compress_` runs as MixA-Q (one flag per field on the command line)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vitcompress.config import Recipe, get_preset, resolve_recipe
from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq.model import DEFAULT_UPPER
from vitcompress.methods.mixaq.saqa import SAQAConfig, parse_saqa
from vitcompress.methods.mixaq.search import MixAQSearchConfig
from vitcompress.options import option
from vitcompress.validate import integer, number, positive_int, version


@dataclass(frozen=True)
class MixAQConfig:
    """MixA-Q: window-level mixed-precision activations for Swin, with an NSGA-II search of the ratios.

    The model is quantized with ``recipe`` (PTQ), its blocks become two-branch blocks whose low branch
    runs ``low_bits`` activations, the low branch is calibrated, and NSGA-II searches one compression
    ratio per pair of blocks, scoring the candidates on ``eval_images`` held-out training images. The
    model is left at the configuration chosen for the relative-BOPs budget ``choose``.

    Attributes:
        recipe: recipe of the high branch and of the whole model's PTQ (preset name or YAML/JSON file)
        low_bits: activation bits of the low branch (2 to 8)
        calib_ratio: ratio at which the low branch is calibrated (the largest ratio the search allows
            covers every window that can go low)
        eval_images: held-out training images that score the candidates, disjoint from the calibration
            images (the next ones of the same seeded permutation of the training set)
        choose: the relative-BOPs budget (BOPs / BOPs at ratio 0) whose chosen configuration, the most
            accurate front point within it, the final model is set to; one of --targets (no front point
            within it: the model stays at ratio 0)
        search: the NSGA-II settings; its ``seed`` is the job's --seed on the command line
        saqa: SAQA fine-tuning before the search (absent: training-free): on, or KEY=VALUE pairs over its
            settings (steps, batch_size, lr, warmup_steps, seed, sampler, upper, step, temperature), e.g.
            steps=100,lr=1e-4; with it the high recipe gets LSQ-learnable scales
        version: format version of the config
    """

    recipe: Recipe = option(
        default_factory=lambda: get_preset("w8a8"), parse=resolve_recipe, cli_default="w8a8", metavar="RECIPE"
    )
    low_bits: int = 4
    calib_ratio: float = DEFAULT_UPPER
    eval_images: int = 1000
    choose: float = 0.8
    search: MixAQSearchConfig = option(default_factory=MixAQSearchConfig)
    saqa: SAQAConfig | None = option(None, parse=parse_saqa, metavar="on|KEY=VALUE,...")
    version: int = option(1, cli=False)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):
            raise ConfigError(
                f"recipe must be a Recipe (see vitcompress.config.get_preset), got {type(self.recipe).__name__}"
            )
        integer("low_bits", self.low_bits, minimum=2, maximum=8)
        number("calib_ratio", self.calib_ratio, low=0, high=1, low_open=True)
        positive_int("eval_images", self.eval_images)
        if not isinstance(self.search, MixAQSearchConfig):
            raise ConfigError(f"search must be a MixAQSearchConfig, got {type(self.search).__name__}")
        if self.saqa is not None and not isinstance(self.saqa, SAQAConfig):
            raise ConfigError(f"saqa must be a SAQAConfig or None, got {type(self.saqa).__name__}")
        targets = [f"{t:g}" for t in self.search.targets]
        number("choose", self.choose, low=0, high=1, low_open=True)
        if f"{self.choose:g}" not in targets:
            raise ConfigError(f"choose must be one of the search targets {targets}, got {self.choose!r}")
        version(type(self).__name__, self.version)

    @property
    def choose_key(self) -> str:
        """The key of ``choose`` in :attr:`SearchResult.chosen <vitcompress.methods.mixaq.search.SearchResult>`."""
        return f"{self.choose:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the recipe by name; ``recipe.json`` of a saved model holds the whole recipe)."""
        return {
            "recipe": self.recipe.name,
            "low_bits": self.low_bits,
            "calib_ratio": self.calib_ratio,
            "eval_images": self.eval_images,
            "choose": self.choose,
            "search": dataclasses.asdict(self.search),
            "saqa": dataclasses.asdict(self.saqa) if self.saqa is not None else None,
            "version": self.version,
        }
