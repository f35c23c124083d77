"""F-LBQ on the command line.

- ``vitcompress compress flbq --model M --budget B ... --out DIR``: :data:`COMMAND`, options from
  :class:`~vitcompress.methods.flbq.config.FLBQConfig` (the job runner does the rest).
- ``vitcompress allocate --curves FILE --budget B``: the solver alone on a distortion-curves file,
  options from :class:`SolveOptions`, wired in with :func:`add_arguments` and :func:`run`. Errors
  (:class:`~vitcompress.errors.VitCompressError`) propagate to the caller, which prints them as one line.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from dataclasses import dataclass

from vitcompress.io import write_json
from vitcompress.methods.flbq.config import FLBQConfig, check_floor
from vitcompress.methods.flbq.curves import Curves
from vitcompress.methods.flbq.solvers import SOLVERS, BitPlan, solve
from vitcompress.options import MethodCommand, add_options, from_args, option
from vitcompress.validate import one_of, positive

log = logging.getLogger(__name__)

# Above this many units the table shows a histogram of bit widths only (the full plan is in --json/--out).
MAX_TABLE_ROWS = 64


def summary(result) -> str:
    """The line ``vitcompress compress flbq`` prints at the end."""
    from vitcompress.eval.task import headline

    m = result.metrics
    what, fp, q = headline(m)  # top-1, or a detector's box mAP
    return (
        f"{m['model']}: {m['avg_bits']:.3f} bits ({result.config.solver.upper()}, {m['units']} units), {what} "
        f"{fp:.2f} -> {q:.2f} ({q - fp:+.2f} pt), distortion "
        f"predicted {m['predicted_distortion']:.4g} / measured {m['measured_distortion']:.4g}, size "
        f"{m['fp_size_bytes']:,} -> {m['size_bytes']:,} bytes; outputs in {result.out}"
    )


COMMAND = MethodCommand(
    name="flbq",
    help="F-LBQ: weight bits per layer or channel group under an average budget (curves, DP/LG solver, PTQ)",
    options=FLBQConfig,
    summary=summary,
)


@dataclass(frozen=True)
class SolveOptions:
    """``vitcompress allocate``: the F-LBQ solver alone, on distortion curves measured before.

    Attributes:
        curves: distortion curves: JSON {"units": [{"name", "size", "bits", "distortion"}, ...]} or .npz
            (a run of `vitcompress compress flbq` leaves DIR/curves.json)
        budget: target average bits per weight B
        solver: dp: exact knapsack (F-LBQ-DP); lg: Lagrangian binary search (F-LBQ-LG)
        min_bits: no unit below this bit width
        margin: minimum bit width ceil(B - margin) (the paper: 1 or 2); not with --min-bits
        eps: lg only: tolerance on the average bits
        out: also write the plan (BitPlan JSON) to this file
        json: print JSON instead of a table
    """

    curves: str
    budget: float
    solver: str = option("dp", choices=tuple(SOLVERS))
    min_bits: int | None = None
    margin: float | None = None
    eps: float = 0.02
    out: str | None = None
    json: bool = False

    def __post_init__(self) -> None:
        positive("budget", self.budget)
        one_of("solver", self.solver, SOLVERS)
        check_floor(self.min_bits, self.margin)
        positive("eps", self.eps)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``allocate`` options (the fields of :class:`SolveOptions`) to ``parser``."""
    add_options(parser, SolveOptions)


def run(args: argparse.Namespace) -> int:
    """Solve and print the plan; a budget outside the feasible range raises ConfigError (exit 2).

    ``args`` may lack the optional fields (a hand-built Namespace): they take their defaults.
    """
    opts = from_args(SolveOptions, args)
    path = str(opts.curves)
    curves = Curves.load_npz(path) if path.endswith(".npz") else Curves.from_json(path)
    plan = solve(curves, opts.budget, opts.solver, min_bits=opts.min_bits, margin=opts.margin, eps=opts.eps)
    if opts.out:
        write_json(opts.out, plan.to_dict())
    if opts.json:
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
        + ("  [not within eps: best plan under the budget]" if plan.within_eps is False else "")
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
