"""``vitcompress mixaq sample`` and ``vitcompress mixaq eqbits`` (METHODS.md §4.3, §4.5; seed 000 §6).

The main console script wires each in with ``add_*_arguments(subparser)`` and ``run_*(args)``. Errors
(:class:`~vitcompress.errors.VitCompressError`) propagate to the caller, which prints them as one line.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal

from vitcompress.errors import ConfigError
from vitcompress.search.mixaq.eqbits import METHOD_SAVING, equivalent_bits, relative_cost
from vitcompress.search.mixaq.sampling import naive_sample, uniform_sum_sample


def add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mixaq sample`` options to ``parser``."""
    parser.add_argument("--blocks", type=int, required=True, help="ratios per vector (Swin-T: 6 block pairs)")
    parser.add_argument(
        "--sum-range",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        default=None,
        help="range of the sum of the ratios (seed 000 Swin-T: 0.6 4.2); required without --naive",
    )
    parser.add_argument("--upper", type=float, default=0.8, help="largest ratio (default 0.8)")
    parser.add_argument("--step", type=float, default=0.1, help="grid of the ratios (default 0.1)")
    parser.add_argument("--alpha", type=float, default=1.0, help="Dirichlet concentration (default 1.0)")
    parser.add_argument("--count", type=int, default=1, help="number of vectors (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: fresh entropy)")
    parser.add_argument("--naive", action="store_true", help="each ratio independently uniform (baseline)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of ratio vectors")


def run_sample(args: argparse.Namespace) -> int:
    """Sample ratio vectors and print them (one per line, or a JSON list with ``--json``); return 0."""
    upper, step, seed = getattr(args, "upper", 0.8), getattr(args, "step", 0.1), getattr(args, "seed", None)
    count = getattr(args, "count", 1)
    if getattr(args, "naive", False):
        vectors = naive_sample(args.blocks, upper=upper, count=count, seed=seed, step=step)
    else:
        if getattr(args, "sum_range", None) is None:
            raise ConfigError("--sum-range: required for uniform-sum sampling (or pass --naive)")
        lo, hi = args.sum_range
        vectors = uniform_sum_sample(
            args.blocks, (lo, hi), upper=upper, count=count, seed=seed, alpha=getattr(args, "alpha", 1.0), step=step
        )
    if getattr(args, "json", False):
        print(json.dumps([list(v) for v in vectors]))
    else:
        decimals = max(1, -Decimal(repr(float(step))).normalize().as_tuple().exponent)
        for v in vectors:
            print(" ".join(f"{r:.{decimals}f}" for r in v) + f"  (sum {round(sum(v), decimals):.{decimals}f})")
    return 0


def add_eqbits_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mixaq eqbits`` options to ``parser``."""
    parser.add_argument(
        "--gmacs",
        type=float,
        nargs="+",
        required=True,
        help="GMACs of each ratio group (seed 000 Swin-T: 13.3 13.56 14.16 14.16 14.16 14.02)",
    )
    parser.add_argument("--c", type=float, required=True, help="GMACs nothing saves (downsampling; Swin-T: 3)")
    parser.add_argument("--ratios", type=float, nargs="+", required=True, help="ratio of each group, in [0, 1]")
    parser.add_argument("--base-bits", type=float, required=True, help="activation bits of the baseline model")
    parser.add_argument(
        "--method",
        choices=sorted(METHOD_SAVING),
        default="mixaq",
        help="mixaq: compressed windows save 50%% (eq. 3); sparsevit: pruned windows save 100%% (eq. 4)",
    )
    parser.add_argument("--json", action="store_true", help='print {"eq_bits": ...}')


def run_eqbits(args: argparse.Namespace) -> int:
    """Print the equivalent activation bits (seed 000 eq. 5); return 0."""
    method = getattr(args, "method", "mixaq")
    bits = equivalent_bits(args.gmacs, args.c, args.ratios, args.base_bits, method=method)
    if getattr(args, "json", False):
        print(json.dumps({"eq_bits": bits}))
    else:
        cost = relative_cost(args.gmacs, args.c, args.ratios, method=method)
        print(f"equivalent activation bits: {bits:.4f} ({method}, base {args.base_bits:g}, relative cost {cost:.4f})")
    return 0
