"""The two F-LBQ solvers on distortion curves alone.

Both minimise the predicted distortion Σ_u D_u(b_u) (the additivity the F-LBQ paper assumes) under
an average bit budget ``B`` (rate of a unit = ``b_u·n_u``; average = Σ b_u n_u / Σ n_u), with an
optional minimum bit width (the paper: 1–2 bits below the target, :func:`min_bits_from_margin`).
:func:`solve` is the one entry every caller goes through (the model-level ``allocate_bits``, the
``compress_`` handler and the ``vitcompress allocate`` tool on a curves file).

- :func:`lagrangian_allocate` (F-LBQ-LG): each unit minimises ``D_u(b) + λ·b·n_u`` independently;
  a binary search over ``λ = 2^t`` brings the average within ``ε`` of ``B``. Fast (vectorised over
  units), optimal for the rate it lands on, but it can only reach rates on the lower convex hull.
- :func:`dp_allocate` (F-LBQ-DP): an exact multiple-choice knapsack on the integer bit total.

Shared conventions (both solvers, both documented in :class:`BitPlan`):

- **Budget arithmetic.** The budget is read as the decimal it prints as (``4.1`` means 41/10, not the
  binary double just below it), so the bit capacity is ``floor(B·Σn)`` computed exactly
  (:func:`capacity_bits`).
- **Infeasible budgets.** A budget outside ``[min_avg, max_avg]`` (the averages of "every unit at its
  fewest allowed bits" and "every unit at its most bits") raises :class:`ConfigError` naming that
  feasible range: no plan can meet it, and a silently "closest" plan would be mistaken for an answer.
- **Ties** go to fewer bits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from vitcompress.errors import ConfigError
from vitcompress.methods.flbq.curves import Curves

log = logging.getLogger(__name__)

# DP back-pointer table limit: one byte per cell, so 2**28 cells = 256 MiB.
DEFAULT_MAX_CELLS = 2**28


# ------------------------------------------------------------------------------------------ helpers
def _exact(x: float, name: str) -> Fraction:
    """``x`` as the decimal it prints as (see the module docstring), checked finite."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ConfigError(f"{name} must be a finite number, got {x!r}")
    return Fraction(repr(float(x)))


def _check_budget(budget: float) -> Fraction:
    b = _exact(budget, "budget")
    if b <= 0:
        raise ConfigError(f"budget must be > 0 (average bits per weight), got {budget!r}")
    return b


def capacity_bits(budget: float, total_size: int) -> int:
    """The integer bit capacity ``floor(B·Σn)`` of a budget, computed exactly.

    ``B`` is read as the decimal it prints as, so ``capacity_bits(4.1, 10) == 41`` (plain floating
    point gives ``4.1 * 10 = 40.99999…`` → 40).
    """
    return math.floor(_check_budget(budget) * int(total_size))


def min_bits_from_margin(budget: float, margin: float) -> int:
    """The minimum bit width ``ceil(B − m)`` (at least 1) for a margin ``m`` below the budget.

    The F-LBQ paper constrains "the minimum bit-width in the solution to 1∼2-bit lower than the target bit
    rate": no unit may sit below ``B − m`` bits, so the smallest allowed integer width is the ceiling
    (``B = 3.5, m = 1`` → 3, since 2 bits would be below 2.5). Exact decimal arithmetic, so
    ``B = 4.1, m = 1`` → 4.

    Args:
        budget: the target average bits ``B`` (> 0).
        margin: ``m`` >= 0 (the paper uses 1 or 2).
    """
    b = _check_budget(budget)
    m = _exact(margin, "margin")
    if m < 0:
        raise ConfigError(f"margin must be >= 0, got {margin!r}")
    return max(1, math.ceil(b - m))


@dataclass(frozen=True)
class _Tables:
    """Padded (U, K) views of the curves restricted to the allowed bit widths."""

    names: tuple[str, ...]
    sizes: np.ndarray  # (U,) int64, n_u
    bits: np.ndarray  # (U, K) int64, 0-padded, ascending per row
    dist: np.ndarray  # (U, K) float64, +inf where the choice is not allowed (padding, < min_bits)
    first: np.ndarray  # (U,) column of the fewest allowed bits
    last: np.ndarray  # (U,) column of the most bits; allowed columns are first..last

    @property
    def total(self) -> int:
        return int(self.sizes.sum())

    def rate_of(self, cols: np.ndarray) -> int:
        """Σ b·n of a choice of one column per unit."""
        return int((self.bits[np.arange(len(cols)), cols] * self.sizes).sum())


def _tables(curves: Curves, min_bits: int | None) -> _Tables:
    if not isinstance(curves, Curves):
        raise ConfigError(f"curves must be a Curves instance, got {type(curves).__name__}")
    if min_bits is not None and (isinstance(min_bits, bool) or not isinstance(min_bits, int) or min_bits < 1):
        raise ConfigError(f"min_bits must be an integer >= 1 or None, got {min_bits!r}")
    n_units, k = len(curves), max(len(u.bits) for u in curves.units)
    bits = np.zeros((n_units, k), dtype=np.int64)
    dist = np.full((n_units, k), np.inf)
    for i, u in enumerate(curves.units):
        bits[i, : len(u.bits)] = u.bits
        dist[i, : len(u.bits)] = u.distortion
    allowed = bits >= (min_bits or 1)  # also drops the 0 padding
    if not allowed.any(axis=1).all():
        u = curves.units[int(np.argmin(allowed.any(axis=1)))]
        raise ConfigError(f"unit {u.name!r}: no candidate bit width >= min_bits={min_bits} (bits {list(u.bits)})")
    dist[~allowed] = np.inf
    first = np.argmax(allowed, axis=1)
    last = k - 1 - np.argmax(allowed[:, ::-1], axis=1)
    sizes = np.array([u.size for u in curves.units], dtype=np.int64)
    return _Tables(curves.names, sizes, bits, dist, first, last)


# ------------------------------------------------------------------------------------------ BitPlan
@dataclass(frozen=True)
class BitPlan:
    """A bit width per unit, with what the solver predicts for it.

    Attributes:
        bits: unit name -> bit width, in the order of the curves.
        avg_bits: achieved average Σ b_u n_u / Σ n_u.
        distortion: predicted Σ_u D_u(b_u) (the additivity assumption of the F-LBQ paper).
        solver: ``"lg"`` or ``"dp"``.
        budget: the requested average bits ``B``.
        seconds: wall time of the solver.
        within_eps: LG only: whether ``|avg_bits − B| <= ε``. False when the Lagrangian jumps over
            the target (a plateau of λ); the plan is then the best one found under the budget.
            None for DP, which has no tolerance (it never exceeds the budget).
        min_bits: the minimum bit width used (None: no constraint).
        total_bits: achieved Σ b_u n_u.
        lam: LG only: the multiplier λ = 2^t of the returned plan.
    """

    bits: dict[str, int]
    avg_bits: float
    distortion: float
    solver: str
    budget: float
    seconds: float
    within_eps: bool | None = None
    min_bits: int | None = None
    total_bits: int | None = None
    lam: float | None = None

    VERSION: ClassVar[int] = 2  # 2: no `feasible` field (infeasible budgets raise)

    def __post_init__(self) -> None:
        if self.solver not in ("lg", "dp"):
            raise ConfigError(f"BitPlan.solver must be one of ['dp', 'lg'], got {self.solver!r}")
        ok = isinstance(self.bits, Mapping) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in self.bits.items()
        )
        if not ok:
            raise ConfigError("BitPlan.bits must map unit names (str) to integer bit widths")
        object.__setattr__(self, "bits", dict(self.bits))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with a ``type`` tag and ``version``."""
        return {"type": "BitPlan", "version": self.VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BitPlan:
        """Inverse of :meth:`to_dict`; unknown keys, another type tag or version are rejected."""
        d = dict(d)
        if d.pop("type", "BitPlan") != "BitPlan":
            raise ConfigError(f"BitPlan: type must be 'BitPlan', got {d.get('type')!r}")
        if (v := d.pop("version", cls.VERSION)) != cls.VERSION:
            raise ConfigError(f"BitPlan: version must be {cls.VERSION}, got {v!r}")
        allowed = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ConfigError(f"BitPlan: unknown keys {unknown}; allowed: {sorted(allowed)}")
        try:
            return cls(**d)
        except TypeError as e:  # a required key is missing
            raise ConfigError(f"BitPlan: {e}") from e


def _make_plan(
    t: _Tables,
    cols: np.ndarray,
    *,
    solver: str,
    budget: float,
    start: float,
    min_bits: int | None,
    within_eps: bool | None = None,
    lam: float | None = None,
) -> BitPlan:
    rows = np.arange(len(cols))
    chosen = t.bits[rows, cols]
    total = t.rate_of(cols)
    return BitPlan(
        bits=dict(zip(t.names, chosen.tolist(), strict=True)),
        avg_bits=total / t.total,
        distortion=float(t.dist[rows, cols].sum()),
        solver=solver,
        budget=float(budget),
        seconds=time.perf_counter() - start,
        within_eps=within_eps,
        min_bits=min_bits,
        total_bits=total,
        lam=lam,
    )


def _require_feasible(t: _Tables, exact_budget: Fraction, min_bits: int | None) -> None:
    """Raise ConfigError naming the feasible range when no plan can reach ``exact_budget``."""
    lo, hi = t.rate_of(t.first), t.rate_of(t.last)
    if not lo <= exact_budget * t.total <= hi:
        raise ConfigError(
            f"budget {float(exact_budget):g} is outside the feasible range [{lo / t.total:.4f}, {hi / t.total:.4f}] "
            f"average bits per weight of these curves (min_bits={min_bits})"
        )


# ------------------------------------------------------------------------------------------ LG
def _t_range_from_curves(t: _Tables, rate: np.ndarray) -> tuple[float, float]:
    """A range of t = log2 λ that holds every breakpoint of the Lagrangian.

    Unit u switches between two allowed widths i < j at λ = (D_i − D_j) / (R_j − R_i) (R = b·n).
    Below the smallest positive such slope every unit takes its least-distortion width; above the
    largest, its fewest bits. So [log2 min − 1, log2 max + 1] covers every plan the Lagrangian can
    give, whatever the scale of the distortions and sizes (the paper's fixed [−100, 0] assumes slopes
    between 2^−100 and 1, which e.g. summed rather than mean squared errors break).
    """
    lo, hi = math.inf, 0.0
    k = t.bits.shape[1]
    with np.errstate(invalid="ignore"):  # inf − inf on disallowed pairs, masked out below
        for i in range(k):
            for j in range(i + 1, k):
                ok = np.isfinite(t.dist[:, i]) & np.isfinite(t.dist[:, j])
                slope = (t.dist[ok, i] - t.dist[ok, j]) / (rate[ok, j] - rate[ok, i])
                slope = slope[slope > 0]
                if slope.size:
                    lo, hi = min(lo, float(slope.min())), max(hi, float(slope.max()))
    if hi == 0.0:  # no unit gains anything from more bits: every λ > 0 gives the same plan
        return -1.0, 1.0
    return math.floor(math.log2(lo)) - 1.0, math.ceil(math.log2(hi)) + 1.0


def _check_lg_args(eps: float, max_iter: int) -> None:
    if not (isinstance(eps, int | float) and math.isfinite(eps) and eps >= 0):
        raise ConfigError(f"eps must be a finite number >= 0, got {eps!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"max_iter must be an integer >= 1, got {max_iter!r}")


def _given_t_range(t_range: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(x) for x in t_range)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"t_range must be two finite numbers lo < hi, got {t_range!r}")
    return lo, hi


def lagrangian_allocate(
    curves: Curves,
    budget: float,
    min_bits: int | None = None,
    eps: float = 0.02,
    t_range: tuple[float, float] | None = None,
    max_iter: int = 100,
) -> BitPlan:
    """F-LBQ-LG: Lagrangian relaxation with a binary search over λ = 2^t.

    For a λ each unit independently takes ``argmin_b D_u(b) + λ·b·n_u`` over its allowed widths
    (vectorised over all units: one (U, K) array operation per λ). The average bits fall as t grows,
    so a binary search on t looks for ``|avg_bits − B| <= eps`` (the paper: ε = 0.02) and stops at the
    first λ that lands there. Any Lagrangian plan is optimal for the rate it achieves (no allocation
    with fewer or equal bits has less distortion), but only rates on the lower convex hull are
    reachable.

    Plateaus: the average is a step function of λ; where one step jumps over ``[B − ε, B + ε]``
    (e.g. many identical units switching at the same λ) no λ lands within ε. The search then narrows
    to the jump and returns the best plan it found under the budget (the largest average <= B, i.e. the
    least distortion there) with ``within_eps=False`` and a warning; :func:`dp_allocate` fills such gaps.

    Args:
        curves: the distortion curves.
        budget: target average bits ``B``.
        min_bits: no unit below this width (None: no constraint). Widths below it are excluded.
        eps: the tolerance ε on the average bits (>= 0).
        t_range: search range of t. Default (None): derived from the curves so that it holds every
            breakpoint of the Lagrangian (see ``_t_range_from_curves``), independent of the scales of
            distortions and sizes. ``(-100.0, 0.0)`` reproduces the paper; a range that misses the
            target gives the closest end plan, with ``within_eps=False``.
        max_iter: most bisection steps (it also stops when t can no longer be halved in float64).

    Returns:
        The plan.

    Raises:
        ConfigError: the budget is outside the feasible range (module docstring).
    """
    start = time.perf_counter()
    exact_b = _check_budget(budget)
    _check_lg_args(eps, max_iter)
    t = _tables(curves, min_bits)
    _require_feasible(t, exact_b, min_bits)
    rate = (t.bits * t.sizes[:, None]).astype(np.float64)  # (U, K) b·n
    lo, hi = _t_range_from_curves(t, rate) if t_range is None else _given_t_range(t_range)
    # Keep λ·b·n finite (λ = 2^t overflows past t ≈ 1024); below 2^−1074, λ is 0 (least distortion).
    t_cap = math.log2(1e300 / float(rate.max()))
    rows = np.arange(len(t.sizes))
    target = float(budget)
    evals: list[tuple[float, float, np.ndarray]] = []  # (t, avg, cols)

    def evaluate(tt: float) -> tuple[float, np.ndarray]:
        lam = 2.0 ** min(max(tt, -1074.0), t_cap)
        cols = np.argmin(t.dist + lam * rate, axis=1)  # first minimum: ties go to fewer bits
        avg = float(rate[rows, cols].sum()) / t.total
        evals.append((tt, avg, cols))
        return avg, cols

    def finish(tt: float, cols: np.ndarray, within: bool, why: str = "") -> BitPlan:
        plan = _make_plan(
            t,
            cols,
            solver="lg",
            budget=budget,
            start=start,
            min_bits=min_bits,
            within_eps=within,
            lam=2.0 ** min(max(tt, -1074.0), t_cap),
        )
        if not within:
            log.warning(
                "LG: no λ gives an average within ε=%g of %g bits (%s); returning %.4f bits",
                eps,
                target,
                why,
                plan.avg_bits,
            )
        log.info(
            "LG: %.4f bits (budget %g), D=%.6g, %d evaluations, %.3f s",
            plan.avg_bits,
            target,
            plan.distortion,
            len(evals),
            plan.seconds,
        )
        return plan

    for tt in (lo, hi):
        avg, cols = evaluate(tt)
        if abs(avg - target) <= eps:
            return finish(tt, cols, True)
    f_lo, f_hi = evals[0][1], evals[1][1]
    if f_lo < target:  # even the smallest λ stays below: the most bits the Lagrangian reaches
        return finish(lo, evals[0][2], False, f"t_range {lo:g}..{hi:g}: the least λ gives {f_lo:.4f}")
    if f_hi > target:  # even the largest λ exceeds the budget: nothing under it was found
        return finish(hi, evals[1][2], False, f"t_range {lo:g}..{hi:g}: the largest λ gives {f_hi:.4f}")
    hi_cols = evals[1][2]
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):  # float64 resolution of t exhausted: a genuine jump
            break
        avg, cols = evaluate(mid)
        if abs(avg - target) <= eps:
            return finish(mid, cols, True)
        if avg > target:
            lo = mid
        else:
            hi, hi_cols = mid, cols
    # avg(t) is non-increasing, so the plan at the final hi has the largest average under the budget
    # among those seen, and on the Lagrangian path the least distortion.
    return finish(
        hi,
        hi_cols,
        False,
        "a plateau jumps over the target; best plan under the budget, dp_allocate reaches the budget exactly",
    )


# ------------------------------------------------------------------------------------------ DP
def dp_allocate(
    curves: Curves, budget: float, min_bits: int | None = None, max_cells: int = DEFAULT_MAX_CELLS
) -> BitPlan:
    """F-LBQ-DP: exact multiple-choice knapsack on the integer bit total.

    Minimises Σ_u D_u(b_u) subject to Σ_u b_u·n_u <= floor(B·Σ n_u) (:func:`capacity_bits`), over the
    allowed widths of every unit, with a back-pointer table (one byte per unit × capacity cell) to
    recover the allocation. Exact: it equals brute force (tested).

    The capacity dimension is reduced without approximation before the DP:

    1. divide every rate ``b·n_u`` and the capacity by g = gcd of all candidate rates (at least the
       gcd of the unit sizes; ``Σ r <= C`` ⟺ ``Σ r/g <= floor(C/g)`` since the left side is an integer);
    2. shift each unit's rates by its smallest allowed one, which every plan pays anyway, and
       subtract their sum from the capacity;
    3. cap the capacity at Σ (largest − smallest rate), beyond which the constraint is slack;
    4. divide the shifted rates and capacity by their gcd (as in 1);
    5. when the capacity is more than half of that span, solve the complementary form instead:
       ``Σ s_u <= C`` ⟺ ``Σ (s_u,max − s_u) >= span − C``, a DP whose requirement saturates at 0, so
       the table has ``min(C, span − C) + 1`` columns.

    E.g. 10,000 channel groups of 50k weights each with widths 2–8 need 20,001 capacity steps at
    B = 4 and 25,001 at B = 5.5. When U × steps still exceeds ``max_cells`` the DP raises a
    ConfigError rather than approximate.

    The DP runs over units; each step is vectorised over the whole capacity axis with numpy.

    Args:
        curves: the distortion curves.
        budget: target average bits ``B``.
        min_bits: no unit below this width (None: no constraint). Widths below it are excluded.
        max_cells: the largest back-pointer table allowed (cells = bytes for <= 255 choices per unit).

    Returns:
        The plan (``within_eps`` None).

    Raises:
        ConfigError: the budget is outside the feasible range (module docstring), or the reduced
            table is larger than ``max_cells``.
    """
    start = time.perf_counter()
    exact_b = _check_budget(budget)
    if isinstance(max_cells, bool) or not isinstance(max_cells, int) or max_cells < 1:
        raise ConfigError(f"max_cells must be an integer >= 1, got {max_cells!r}")
    t = _tables(curves, min_bits)
    _require_feasible(t, exact_b, min_bits)
    n_units = len(t.sizes)
    rows = np.arange(n_units)
    allowed = np.isfinite(t.dist)
    rate = t.bits * t.sizes[:, None]  # (U, K) int64
    g = int(np.gcd.reduce(rate[allowed]))
    w = rate // g
    w_first = w[rows, t.first]
    cap = math.floor(exact_b * t.total) // g - int(w_first.sum())
    shifted = np.where(allowed, w - w_first[:, None], 0)  # (U, K), 0 at each unit's fewest bits
    g2 = int(np.gcd.reduce(shifted[allowed])) or 1  # 0 when every unit has a single choice
    shifted //= g2
    span = int(shifted[rows, t.last].sum())
    cap = min(cap // g2, span)
    steps = min(cap, span - cap) + 1
    if n_units * steps > max_cells:
        raise ConfigError(
            f"DP table too large: {n_units:,} units x {steps:,} capacity steps = {n_units * steps:,} cells "
            f"(rates divided by gcd {g * g2:,}) > max_cells={max_cells:,}. Use the Lagrangian solver "
            f"(--solver lg), or group units into larger ones whose sizes share a common factor"
        )
    if cap <= span - cap:
        cols = _knapsack_at_most(t, shifted, cap)
    else:  # Σ s <= cap  ⟺  Σ (s_max − s) >= span − cap: the smaller table
        cols = _knapsack_at_least(t, shifted[rows, t.last][:, None] - shifted, span - cap)
    plan = _make_plan(t, cols, solver="dp", budget=budget, start=start, min_bits=min_bits)
    log.info(
        "DP: %.4f bits (budget %g), D=%.6g, table %d x %d, %.3f s",
        plan.avg_bits,
        float(budget),
        plan.distortion,
        n_units,
        steps,
        plan.seconds,
    )
    return plan


def _back_table(t: _Tables, steps: int) -> np.ndarray:
    return np.empty((len(t.sizes), steps), dtype=np.uint8 if t.bits.shape[1] <= 255 else np.uint16)


def _knapsack_at_most(t: _Tables, rate: np.ndarray, cap: int) -> np.ndarray:
    """Columns minimising Σ D subject to Σ rate <= cap (rate: (U, K) ints, 0 at each unit's first column).

    ``val[c]`` = least distortion of the units so far within rate c; ``back[u, c]`` = the column unit
    u takes there. One numpy pass over the capacity axis per (unit, choice).
    """
    n_units = len(t.sizes)
    back = _back_table(t, cap + 1)
    val = np.zeros(cap + 1)  # no unit yet: distortion 0 at every capacity
    new, cand, better = np.empty(cap + 1), np.empty(cap + 1), np.empty(cap + 1, dtype=bool)
    for u in range(n_units):
        c0 = int(t.first[u])  # rate 0: fits every capacity
        np.add(val, t.dist[u, c0], out=new)
        row = back[u]
        row.fill(c0)
        for k in range(c0 + 1, int(t.last[u]) + 1):
            wk = int(rate[u, k])
            if wk > cap:
                break  # widths ascend, so later choices do not fit either
            m = cap + 1 - wk
            np.add(val[:m], t.dist[u, k], out=cand[:m])
            np.less(cand[:m], new[wk:], out=better[:m])  # strict: ties keep fewer bits
            np.copyto(new[wk:], cand[:m], where=better[:m])
            np.copyto(row[wk:], k, where=better[:m])
        val, new = new, val
    cols = np.empty(n_units, dtype=np.int64)
    c = cap
    for u in range(n_units - 1, -1, -1):  # follow the back-pointers from the full capacity
        cols[u] = back[u, c]
        c -= int(rate[u, cols[u]])
    return cols


def _knapsack_at_least(t: _Tables, gain: np.ndarray, need: int) -> np.ndarray:
    """Columns minimising Σ D subject to Σ gain >= need (gain: (U, K) ints >= 0).

    ``val[c]`` = least distortion of the units so far with Σ gain >= c, the requirement saturating at
    0 (``c − gain`` below 0 counts as 0), so the table has ``need + 1`` columns.
    """
    n_units = len(t.sizes)
    back = _back_table(t, need + 1)
    val = np.full(need + 1, np.inf)
    val[0] = 0.0  # no unit yet: only "at least 0" is met
    new, cand, better = np.empty(need + 1), np.empty(need + 1), np.empty(need + 1, dtype=bool)
    for u in range(n_units):
        new.fill(np.inf)
        row = back[u]
        row.fill(t.first[u])
        for k in range(int(t.first[u]), int(t.last[u]) + 1):  # ascending bits: ties keep fewer bits
            gk = min(int(gain[u, k]), need + 1)
            cand[:gk] = val[0] + t.dist[u, k]  # requirement c <= gain: met from "at least 0"
            np.add(val[: need + 1 - gk], t.dist[u, k], out=cand[gk:])
            np.less(cand, new, out=better)
            np.copyto(new, cand, where=better)
            np.copyto(row, k, where=better)
        val, new = new, val
    cols = np.empty(n_units, dtype=np.int64)
    c = need
    for u in range(n_units - 1, -1, -1):
        cols[u] = back[u, c]
        c = max(c - int(gain[u, cols[u]]), 0)
    return cols


SOLVERS: dict[str, Callable[..., BitPlan]] = {"dp": dp_allocate, "lg": lagrangian_allocate}


def solve(
    curves: Curves,
    budget: float,
    solver: str = "dp",
    *,
    min_bits: int | None = None,
    margin: float | None = None,
    eps: float = 0.02,
) -> BitPlan:
    """The plan of ``solver`` on ``curves`` at ``budget``: the one way every caller runs a solver.

    Args:
        curves: the distortion curves.
        budget: target average bits ``B``.
        solver: ``"dp"`` (:func:`dp_allocate`) or ``"lg"`` (:func:`lagrangian_allocate`).
        min_bits: no unit below this width; or ``margin`` m for ``ceil(B − m)`` (:func:`min_bits_from_margin`).
        eps: LG's tolerance on the average bits (ignored by DP).

    Raises:
        ConfigError: unknown solver, both ``min_bits`` and ``margin``, or a budget outside the feasible range.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if min_bits is not None and margin is not None:
        raise ConfigError("give min_bits or margin, not both")
    if margin is not None:
        min_bits = min_bits_from_margin(budget, margin)
    kwargs = {"eps": eps} if solver == "lg" else {}
    return SOLVERS[solver](curves, budget, min_bits=min_bits, **kwargs)
