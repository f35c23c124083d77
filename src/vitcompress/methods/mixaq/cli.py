"""MixA-Q on the command line: ``vitcompress compress mixaq`` (:data:`COMMAND`) and the pure tools
``vitcompress mixaq sample`` and ``mixaq eqbits``.

The main console script wires the tools in with ``add_*_arguments(subparser)`` and ``run_*(args)``; their
options are the fields of :class:`SampleOptions` and :class:`EqbitsOptions`. Errors
(:class:`~vitcompress.errors.VitCompressError`) propagate to the caller, which prints them as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq.config import MixAQConfig
from vitcompress.methods.mixaq.eqbits import METHOD_SAVING, equivalent_bits, relative_cost
from vitcompress.methods.mixaq.sampling import naive_sample, uniform_sum_sample
from vitcompress.options import MethodCommand, add_options, from_args, option
from vitcompress.result import Result
from vitcompress.validate import positive_int


# ---- vitcompress compress mixaq -----------------------------------------------------------------------------
def build(options: MixAQConfig, shared: dict[str, Any]) -> MixAQConfig:
    """The config of the parsed options, the search seeded with the job's ``--seed``."""
    seed = shared.get("seed")
    if seed is None:
        return options
    return dataclasses.replace(options, search=dataclasses.replace(options.search, seed=seed))


def summary(result: Result) -> str:
    """The front and the chosen configuration, then the usual accuracy line (a detector's: box mAP, and its
    backbone and whole-detector BOPs)."""
    from vitcompress.eval.task import headline

    m = result.metrics
    held, score = m["held_out"], m.get("score", "top-1")
    lines = [
        f"{m['model']} {m['recipe']} / A{m['low_bits']}: {held['evaluated']} configurations evaluated on "
        f"{m['config']['eval_images']} held-out images; ratio 0: {score} {held['baseline']['top1']:.2f}"
    ]
    lines += [
        f"  front  rel BOPs {p['rel_bops']:.4f}  {score} {p['top1']:6.2f}  ratios {p['ratios']}" for p in held["front"]
    ]
    lines += [
        f"  test   {name:<8} rel BOPs {p['rel_bops']:.4f}  {score} {p['top1']:6.2f}  ratios {p['ratios']}"
        for name, p in m.get("test", {}).items()
    ]
    chosen = m["chosen"]
    where = f"ratios {chosen['ratios']}" if chosen["found"] else "ratio 0 (no front point within it)"
    name, fp, q = headline(m)
    lines.append(
        f"model set to the point chosen for rel BOPs {chosen['target']:g}: {where}; {name} {fp:.2f} -> {q:.2f}; "
        f"outputs in {result.out}"
    )
    d = m.get("detector_cost")
    if d is not None:
        lines.append(
            f"backbone BOPs {d['backbone_bops']:.4g} ({d['backbone_bops_reduction_vs_ptq']:.3f}x less than uniform "
            f"PTQ); whole detector {d['total_bops']:.4g} ({d['total_bops_reduction_vs_ptq']:.3f}x)"
        )
    return "\n".join(lines)


COMMAND = MethodCommand(
    name="mixaq",
    help="MixA-Q: window-level mixed-precision activations for Swin, NSGA-II search of the ratios",
    options=MixAQConfig,
    build=build,
    summary=summary,
)


# ---- vitcompress mixaq sample -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleOptions:
    """``vitcompress mixaq sample``.

    Attributes:
        blocks: ratios per vector (Swin-T: 6 block pairs)
        sum_range: range of the sum of the ratios (MixA-Q's Swin-T: 0.6 4.2); required without --naive
        upper: largest ratio
        step: grid of the ratios
        alpha: Dirichlet concentration
        count: number of vectors
        seed: random seed (default: fresh entropy)
        naive: each ratio independently uniform (the baseline)
        json: print a JSON list of ratio vectors
    """

    blocks: int
    sum_range: tuple[float, float] | None = option(None, metavar=("LO", "HI"))
    upper: float = 0.8
    step: float = 0.1
    alpha: float = 1.0
    count: int = 1
    seed: int | None = None
    naive: bool = False
    json: bool = False

    def __post_init__(self) -> None:
        positive_int("blocks", self.blocks)
        positive_int("count", self.count)  # 0 would print nothing and succeed


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mixaq sample`` options to ``parser``."""
    add_options(parser, SampleOptions)


def run_sample(args: argparse.Namespace) -> int:
    """Sample ratio vectors and print them (one per line, or a JSON list with ``--json``); return 0."""
    o = from_args(SampleOptions, args)
    if o.naive:
        vectors = naive_sample(o.blocks, upper=o.upper, count=o.count, seed=o.seed, step=o.step)
    else:
        if o.sum_range is None:
            raise ConfigError("--sum-range: required for uniform-sum sampling (or pass --naive)")
        vectors = uniform_sum_sample(
            o.blocks, o.sum_range, upper=o.upper, count=o.count, seed=o.seed, alpha=o.alpha, step=o.step
        )
    if o.json:
        print(json.dumps([list(v) for v in vectors]))
    else:
        decimals = max(1, -Decimal(repr(float(o.step))).normalize().as_tuple().exponent)
        for v in vectors:
            print(" ".join(f"{r:.{decimals}f}" for r in v) + f"  (sum {round(sum(v), decimals):.{decimals}f})")
    return 0


# ---- vitcompress mixaq eqbits -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EqbitsOptions:
    """``vitcompress mixaq eqbits``: equivalent activation bits (MixA-Q supplementary §6.2, eq. 3–5).

    Attributes:
        gmacs: GMACs of each ratio group (MixA-Q's Swin-T: 13.3 13.56 14.16 14.16 14.16 14.02)
        c: GMACs nothing saves (downsampling; Swin-T: 3)
        ratios: ratio of each group, in [0, 1]
        base_bits: activation bits of the baseline model
        method: mixaq: compressed windows save 50%% (eq. 3); sparsevit: pruned windows save 100%% (eq. 4)
        json: print {"eq_bits": ...}
    """

    gmacs: tuple[float, ...]
    c: float
    ratios: tuple[float, ...]
    base_bits: float
    method: str = option("mixaq", choices=tuple(sorted(METHOD_SAVING)))
    json: bool = False


def add_eqbits_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mixaq eqbits`` options to ``parser``."""
    add_options(parser, EqbitsOptions)


def run_eqbits(args: argparse.Namespace) -> int:
    """Print the equivalent activation bits (MixA-Q supplementary eq. 5); return 0."""
    o = from_args(EqbitsOptions, args)
    bits = equivalent_bits(o.gmacs, o.c, o.ratios, o.base_bits, method=o.method)
    if o.json:
        print(json.dumps({"eq_bits": bits}))
    else:
        cost = relative_cost(o.gmacs, o.c, o.ratios, method=o.method)
        print(f"equivalent activation bits: {bits:.4f} ({o.method}, base {o.base_bits:g}, relative cost {cost:.4f})")
    return 0
