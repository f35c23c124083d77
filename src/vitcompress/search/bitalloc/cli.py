"""``vitcompress allocate``: bit allocation from a distortion-curves file (F-LBQ, METHODS.md §2).

The main console script wires it in with ``add_arguments(subparser)`` and ``run(args)``. Errors
(:class:`~vitcompress.errors.VitCompressError`) propagate to the caller, which prints them as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter

from vitcompress.io import write_json
from vitcompress.search.bitalloc.curves import Curves
from vitcompress.search.bitalloc.solvers import SOLVERS, BitPlan, min_bits_from_margin

log = logging.getLogger(__name__)

# Above this many units the table shows a histogram of bit widths only (the full plan is in --json/--out).
MAX_TABLE_ROWS = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``allocate`` options to ``parser``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--curves",
        help='solver only: distortion curves, JSON {"units": [{"name", "size", "bits", "distortion"}, ...]} or .npz',
    )
    source.add_argument("--model", help="end to end: measure the curves of this zoo model, allocate, quantize, "
                        "evaluate and report into --out DIR")
    parser.add_argument("--budget", type=float, required=True, help="target average bits per weight B")
    parser.add_argument(
        "--solver",
        default="dp",
        choices=sorted(SOLVERS),
        help="dp: exact knapsack (F-LBQ-DP, default); lg: Lagrangian binary search (F-LBQ-LG)",
    )
    floor = parser.add_mutually_exclusive_group()
    floor.add_argument("--min-bits", type=int, default=None, help="no unit below this bit width")
    floor.add_argument(
        "--margin", type=float, default=None, help="minimum bit width ceil(B - margin) (seed 003: 1 or 2)"
    )
    parser.add_argument("--eps", type=float, default=0.02, help="lg only: tolerance on the average bits")
    parser.add_argument("--out", default=None, help="with --curves: also write the plan (BitPlan JSON) to this file; "
                        "with --model: the output folder (required)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    m = parser.add_argument_group("with --model")
    m.add_argument("--unit", default="layer", help="'layer' or 'group:G' (G output channels per unit)")
    m.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8], help="candidate bit widths")
    m.add_argument("--n-images", type=int, default=64, help="calibration images for the curves (seed 003: 64)")
    m.add_argument("--calib-size", type=int, default=1000, help="calibration images for the activation ranges")
    m.add_argument("--act-bits", type=int, default=8, help="bits of every activation point")
    m.add_argument("--head-bits", type=int, default=8, help="uniform bits of the classifier weights")
    m.add_argument("--target", default="pre_logits", help="features compared: pre_logits, logits, or a module inside "
                   "a block (e.g. blocks.3); layers after that module must be excluded")
    m.add_argument("--exclude", nargs="+", default=[], help="globs of backbone layers left out (they keep 8 bits)")
    m.add_argument("--seed", type=int, default=0, help="seed of the calibration subset")
    m.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    m.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST idx files")
    m.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    """Solve and print the plan; a budget outside the feasible range raises ConfigError (exit 2)."""
    path = str(args.curves)
    curves = Curves.load_npz(path) if path.endswith(".npz") else Curves.from_json(path)
    min_bits = getattr(args, "min_bits", None)  # optional keys: a hand-built Namespace works too
    if getattr(args, "margin", None) is not None:
        min_bits = min_bits_from_margin(args.budget, args.margin)
    kwargs = {"eps": getattr(args, "eps", 0.02)} if args.solver == "lg" else {}
    plan = SOLVERS[args.solver](curves, args.budget, min_bits=min_bits, **kwargs)
    if getattr(args, "out", None):
        write_json(args.out, plan.to_dict())
    if getattr(args, "json", False):
        out = {
            "bits": plan.bits,
            "avg_bits": plan.avg_bits,
            "distortion": plan.distortion,
            "seconds": plan.seconds,
            "solver": plan.solver,
            "budget": plan.budget,
            "within_eps": plan.within_eps,
            "min_bits": plan.min_bits,
            "total_bits": plan.total_bits,
        }
        print(json.dumps(out))
    else:
        print(_table(plan, curves))
    return 0


def _table(plan: BitPlan, curves: Curves) -> str:
    lines = [
        f"{plan.solver.upper()}: {plan.avg_bits:.4f} bits (budget {plan.budget:g}, min bits "
        f"{plan.min_bits if plan.min_bits is not None else '-'}), predicted distortion "
        f"{plan.distortion:.6g}, {plan.seconds:.3f} s"
        + (
            "  [not within eps: best plan under the budget]"
            if plan.within_eps is False
            else ""
        )
    ]
    if len(curves) <= MAX_TABLE_ROWS:
        width = max(len(n) for n in curves.names)
        lines.append(f"{'unit':<{width}}  {'size':>10}  bits")
        lines += [f"{u.name:<{width}}  {u.size:>10,}  {plan.bits[u.name]:>4}" for u in curves.units]
    else:
        units, weights = Counter(), Counter()
        for u in curves.units:
            units[plan.bits[u.name]] += 1
            weights[plan.bits[u.name]] += u.size
        lines.append(f"{'bits':>4}  {'units':>8}  {'weights':>8}")
        share = {b: 100 * weights[b] / curves.total_size for b in units}
        lines += [f"{b:>4}  {units[b]:>8,}  {share[b]:>7.2f}%" for b in sorted(units)]
        lines.append(f"({len(curves):,} units; --json or --out for the per-unit plan)")
    return "\n".join(lines)
