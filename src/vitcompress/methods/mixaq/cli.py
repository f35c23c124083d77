"""``vitcompress mixaq sample``, ``eqbits`` and ``search`` (METHODS.md §4.3–4.5; seed 000 §6).

The main console script wires each in with ``add_*_arguments(subparser)`` and ``run_*(args)``. Errors
(:class:`~vitcompress.errors.VitCompressError`) propagate to the caller, which prints them as one line.
"""

from __future__ import annotations

import argparse
import json
from decimal import Decimal

from vitcompress.errors import ConfigError
from vitcompress.methods.mixaq.eqbits import METHOD_SAVING, equivalent_bits, relative_cost
from vitcompress.methods.mixaq.sampling import naive_sample, uniform_sum_sample


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


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``mixaq search`` options to ``parser``."""
    parser.add_argument("--model", default="swin-fmnist", help="zoo Swin model (default swin-fmnist)")
    parser.add_argument("--recipe", default="w8a8", help="recipe of the high branch (default w8a8)")
    parser.add_argument("--low-bits", type=int, default=4, help="activation bits of the low branch (default 4)")
    parser.add_argument("--calib", type=int, default=256, help="calibration images from the train set (default 256)")
    parser.add_argument("--eval-images", type=int, default=1000,
                        help="held-out train images scoring the candidates, disjoint from --calib (default 1000)")
    parser.add_argument("--test-limit", type=int, default=2000,
                        help="test images for the chosen configurations (0: skip; default 2000)")
    parser.add_argument("--population", type=int, default=8, help="NSGA-II population (default 8)")
    parser.add_argument("--generations", type=int, default=2,
                        help="offspring generations after the initial population (default 2)")
    parser.add_argument("--init", choices=["uniform-sum", "naive"], default="uniform-sum",
                        help="initial population sampler (default uniform-sum, seed 000 Algorithm 1)")
    parser.add_argument("--cost-range", type=float, nargs=2, metavar=("LO", "HI"), default=(0.65, 0.95),
                        help="relative-cost range of the uniform-sum sampler (default 0.65 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits, sampler and search (default 0)")
    parser.add_argument("--data-root", default=None, help="dataset folder (default: Fashion-MNIST)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", required=True, help="output folder (state, pareto.json/png, chosen, summary)")
    parser.add_argument("--resume", action="store_true", help="continue the search saved in --out")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run_search(args: argparse.Namespace) -> int:
    """Run the MixA-Q search and print the front and the chosen configurations; return 0."""
    from vitcompress.methods.mixaq.job import SearchJob, run_search_job
    from vitcompress.methods.mixaq.search import MixAQSearchConfig

    config = MixAQSearchConfig(population=args.population, generations=args.generations, init=args.init,
                               cost_range=tuple(args.cost_range), seed=args.seed)
    job = SearchJob(model=args.model, recipe=args.recipe, low_bits=args.low_bits, n_calib=args.calib,
                    n_eval=args.eval_images, test_limit=args.test_limit or None, data_root=args.data_root)
    summary = run_search_job(job, config, args.out, resume=args.resume)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    held = summary["held_out"]
    base = held["baseline"]
    print(f"{args.model} {args.recipe} / A{args.low_bits}: {held['evaluated']} configurations evaluated on "
          f"{args.eval_images} held-out images; ratio 0: top-1 {base['top1']:.2f}")
    for p in held["front"]:
        print(f"  front  rel BOPs {p['rel_bops']:.4f}  top-1 {p['top1']:6.2f}  ratios {p['ratios']}")
    for name, p in summary.get("test", {}).items():
        print(f"  test   {name:<8} rel BOPs {p['rel_bops']:.4f}  top-1 {p['top1']:6.2f}  ratios {p['ratios']}")
    print(f"outputs in {args.out}")
    return 0
