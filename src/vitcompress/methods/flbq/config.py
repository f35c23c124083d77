"""``FLBQConfig``: every knob of F-LBQ bit allocation, frozen and validated."""

from __future__ import annotations

from dataclasses import dataclass

from vitcompress.config import ALLOWED_BITS, Recipe, resolve_recipe
from vitcompress.errors import ConfigError
from vitcompress.methods.flbq.measure import DEFAULT_BITS, check_bits
from vitcompress.methods.flbq.solvers import SOLVERS
from vitcompress.methods.flbq.units import parse_unit
from vitcompress.options import option
from vitcompress.validate import integer, number, one_of, positive, positive_int


def check_floor(min_bits: int | None, margin: float | None) -> None:
    """``min_bits`` (an integer >= 1) or ``margin`` (a number >= 0), not both."""
    integer("min_bits", min_bits, minimum=1, optional=True)
    number("margin", margin, low=0, optional=True)
    if min_bits is not None and margin is not None:
        raise ConfigError("give min_bits or margin, not both")


@dataclass(frozen=True)
class FLBQConfig:
    """F-LBQ: a weight bit width per backbone layer or channel group under an average bit budget.

    Distortion curves ``D_u(b)`` of every unit, then the DP or Lagrangian solver, then post-training
    quantization with the plan (weights as planned, least-MSE scales; activations at ``act_bits``).

    Attributes:
        budget: target average bits per backbone weight B
        unit: 'layer' or 'group:G' (G output channels per unit; G must divide every backbone layer's output channels)
        solver: dp: exact knapsack (F-LBQ-DP); lg: Lagrangian binary search (F-LBQ-LG); the other one is solved
            too, for the report
        bits: candidate bit widths (2..8)
        min_bits: no unit below this bit width
        margin: minimum bit width ceil(B - margin) (the paper: 1 or 2); not with min_bits
        eps: lg only: tolerance on the average bits (the paper: 0.02)
        n_images: calibration images the distortion curves are measured on (the paper: 64)
        act_bits: bits of every activation point (linear inputs, q/k/v, softmax probabilities, LayerNorm inputs)
        head_bits: uniform bits of the classifier weights
        target: features compared: pre_logits, logits, or a module inside a block (e.g. blocks.3); layers after
            that module must be excluded
        exclude: globs of backbone layers left out of the allocation (they keep 8 bits)
        base: a preset or recipe file the plan's weight bits are applied on: its activation points, LayerNorm
            reparameterization, softmax quantizer and block reconstruction (e.g. recon-w4a4: the planned bits then
            get learned rounding); default: w8a8 with every activation at act_bits (act_bits is then unused)
    """

    budget: float
    unit: str = "layer"
    solver: str = option("dp", choices=tuple(SOLVERS))
    bits: tuple[int, ...] = DEFAULT_BITS
    min_bits: int | None = None
    margin: float | None = None
    eps: float = 0.02
    n_images: int = 64
    act_bits: int = 8
    head_bits: int = 8
    target: str = "pre_logits"
    exclude: tuple[str, ...] = ()
    base: Recipe | None = option(None, parse=resolve_recipe, metavar="NAME|FILE")

    def __post_init__(self) -> None:
        positive("budget", self.budget)
        parse_unit(self.unit)
        one_of("solver", self.solver, SOLVERS)
        check_bits(self.bits)
        check_floor(self.min_bits, self.margin)
        positive("eps", self.eps)
        positive_int("n_images", self.n_images)
        one_of("act_bits", self.act_bits, ALLOWED_BITS)
        one_of("head_bits", self.head_bits, ALLOWED_BITS)
        if not isinstance(self.target, str) or not self.target:
            raise ConfigError(f"target must be 'pre_logits', 'logits' or a module name, got {self.target!r}")
        if isinstance(self.exclude, str) or not all(isinstance(p, str) for p in self.exclude):
            raise ConfigError(f"exclude must be a list of glob patterns, got {self.exclude!r}")
        object.__setattr__(self, "bits", tuple(self.bits))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.base is not None and not isinstance(self.base, Recipe):
            object.__setattr__(self, "base", resolve_recipe(self.base))
