"""Compression-ratio samplers for MixA-Q (its supplementary material, §6.1, Algorithm 1).

A *ratio vector* holds one compression ratio per group of Swin blocks (:func:`ratio_groups`): the
fraction of that group's windows sent to the low-bit branch. Ratios live on a grid
``{0, step, 2·step, …, upper}`` (the paper: step 0.1, upper 0.8). The samplers work on the integer scale
``k = r / step`` (the paper's "×10") and return floats rounded to the grid's decimals, so ``0.3`` never
comes back as ``0.30000000000000004``.

- :func:`uniform_sum_sample`: Algorithm 1 of the MixA-Q supplementary material. The *sum* of the
  ratios (∝ the saved computation when all groups cost the same) is uniform over the requested range,
  so SAQA and the search see cheap and expensive configurations equally often.
- :func:`naive_sample`: every ratio independently uniform on the grid (the baseline); its sums pile up
  in the middle (a sum of i.i.d. variables).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from vitcompress.errors import ConfigError

log = logging.getLogger(__name__)

Seed = int | np.random.Generator | np.random.SeedSequence | None
RatioVector = tuple[float, ...]

# Slack when mapping user floats onto the integer grid: (1 - 0.95) * 6 * 2 = 0.6000000000000005.
_GRID_TOL = 1e-9
# Dirichlet draws per rejection batch grow from _FIRST_BATCH to _MAX_BATCH (acceptance can be ~0.5 %
# near the top of the Swin-T range, ~100 % at the bottom).
_FIRST_BATCH = 8
_MAX_BATCH = 4096


@dataclass(frozen=True)
class _Grid:
    """The integer scale of Algorithm 1: ratio r <-> integer k = r·scale, 0 <= k <= upper_k."""

    scale: int
    upper_k: int
    decimals: int

    def to_ratios(self, ks: Sequence[int] | np.ndarray) -> RatioVector:
        # Algorithm 1 line 23: r_i <- R_i / 10 (k/scale is a correctly rounded division; round() only
        # pins the float to the shortest decimal for grids such as 0.05).
        return tuple(round(int(k) / self.scale, self.decimals) for k in ks)


def _grid(upper: float, step: float) -> _Grid:
    if not (isinstance(step, int | float) and math.isfinite(step) and 0 < step <= 1):
        raise ConfigError(f"step: must be in (0, 1], got {step!r}")
    scale = round(1 / step)
    if abs(scale * step - 1) > _GRID_TOL:
        raise ConfigError(f"step: 1/step must be an integer (e.g. 0.1, 0.05, 0.25), got {step!r}")
    if not (isinstance(upper, int | float) and math.isfinite(upper) and 0 < upper <= 1):
        raise ConfigError(f"upper: must be in (0, 1], got {upper!r}")
    upper_k = round(upper * scale)
    if upper_k < 1 or abs(upper_k - upper * scale) > _GRID_TOL * scale:
        raise ConfigError(f"upper: must be a positive multiple of step={step:g}, got {upper!r}")
    decimals = max(0, -int(Decimal(repr(step)).normalize().as_tuple().exponent))
    return _Grid(scale=scale, upper_k=upper_k, decimals=decimals)


def _check_count(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _sum_bounds_k(sum_range: tuple[float, float], n_blocks: int, upper: float, grid: _Grid) -> tuple[int, int]:
    """Algorithm 1 line 3: S_min <- s_min·10, S_max <- s_max·10, as the integers inside the range."""
    if len(sum_range) != 2:
        raise ConfigError(f"sum_range: must be (s_min, s_max), got {sum_range!r}")
    s_min, s_max = (float(s) for s in sum_range)
    top = n_blocks * upper
    if not (math.isfinite(s_min) and math.isfinite(s_max)):
        raise ConfigError(f"sum_range: must be finite, got {sum_range!r}")
    if not (-_GRID_TOL <= s_min <= s_max <= top + _GRID_TOL):
        raise ConfigError(
            f"sum_range: need 0 <= s_min <= s_max <= n_blocks·upper = {top:g}, got ({s_min:g}, {s_max:g})"
        )
    lo_k = max(0, math.ceil(s_min * grid.scale - _GRID_TOL))
    hi_k = min(n_blocks * grid.upper_k, math.floor(s_max * grid.scale + _GRID_TOL))
    if lo_k > hi_k:
        raise ConfigError(f"sum_range: ({s_min:g}, {s_max:g}) contains no multiple of the step 1/{grid.scale}")
    return lo_k, hi_k


def _largest_remainder(r: np.ndarray, total: int) -> np.ndarray:
    """Algorithm 1 lines 12–21: floor every r_i, then give the ``total − ΣR`` missing units to the
    entries with the largest fractional remainders, so the integers sum to ``total`` exactly.

    Only entries with a positive remainder can be incremented (the missing units equal the sum of the
    remainders, each < 1), so an entry that was <= U before rounding stays <= U.
    """
    floors = np.floor(r).astype(np.int64)
    diff = total - int(floors.sum())
    if diff > 0:
        order = np.argsort(-(r - floors), kind="stable")
        floors[order[:diff]] += 1
    return floors


def _draw_sum_k(
    rng: np.random.Generator, n_blocks: int, total: int, upper_k: int, alpha: float, max_tries: int
) -> np.ndarray:
    """Algorithm 1 lines 6–21 for one target sum ``total`` on the integer scale."""
    if total == n_blocks * upper_k:
        # Every ratio at the bound is the only admissible vector; the rejection loop would accept it
        # with probability 0 (a single point of the simplex), so return it directly.
        return np.full(n_blocks, upper_k, dtype=np.int64)
    tries, batch = 0, _FIRST_BATCH
    while tries < max_tries:
        size = min(batch, max_tries - tries)
        # Lines 7–10: (r_i) ~ Dirichlet(α), r_i <- r_i·S; line 11: until every r_i <= U.
        r = rng.dirichlet(np.full(n_blocks, alpha), size=size) * total
        accepted = np.flatnonzero((r <= upper_k).all(axis=1))
        tries += size
        if accepted.size:
            return _largest_remainder(r[accepted[0]], total)
        batch = min(2 * batch, _MAX_BATCH)
    raise ConfigError(
        f"max_tries: no Dirichlet draw with every ratio <= upper in {max_tries} tries for sum "
        f"{total}/{n_blocks * upper_k} of the maximum; lower sum_range or raise max_tries"
    )


def uniform_sum_sample(
    n_blocks: int,
    sum_range: tuple[float, float],
    upper: float = 0.8,
    count: int = 1,
    seed: Seed = None,
    alpha: float = 1.0,
    step: float = 0.1,
    max_tries: int = 1_000_000,
) -> list[RatioVector]:
    """Uniform-sum compression-ratio sampling (MixA-Q supplementary material, Algorithm 1).

    For each vector: draw the target sum ``S`` uniformly among the *integers* of
    ``[s_min/step, s_max/step]`` (Algorithm 1 line 5, ``S ~ Uniform(S_min, S_max)``; the largest-remainder
    rounding of lines 12–21 reaches ``S`` exactly only when ``S`` is an integer, so ``S`` is drawn on the
    integer grid, with every attainable sum equally likely, endpoints included — a continuous draw
    rounded afterwards would give the two endpoints half the weight of the others). Then draw
    ``(r_i) ~ Dirichlet(α)`` scaled to ``S`` until every ``r_i <= upper/step``, round with the largest
    remainder method and divide by ``1/step``.

    Algorithm 1's listing returns ``r_0 … r_n`` (n + 1 values) for "n layers"; here ``n_blocks`` is the
    number of ratios returned (6 for Swin-T, see :func:`ratio_groups`).

    Args:
        n_blocks: Number of ratios per vector (block groups).
        sum_range: ``(s_min, s_max)``, the range of the sum of the ratios (MixA-Q supplementary §6.1:
            ``(0.6, 4.2)`` for Swin-T; :func:`sum_range_from_cost` derives it from a relative-cost range).
            Needs ``0 <= s_min <= s_max <= n_blocks·upper`` and a multiple of ``step`` inside.
        upper: Largest ratio ``u`` (the paper: 0.8); a multiple of ``step`` in ``(0, 1]``.
        count: Number of vectors.
        seed: An int, a ``numpy.random.Generator`` (used and advanced in place) or ``None`` (fresh
            entropy). The same int gives the same vectors.
        alpha: Concentration of the symmetric Dirichlet (1.0: uniform on the simplex).
        step: Grid spacing of the ratios (the paper: 0.1, the "×10" scale); ``1/step`` an integer.
        max_tries: Dirichlet draws allowed per vector before giving up. Acceptance falls quickly as
            ``s_max`` nears ``n_blocks·upper`` (Swin-T at 4.2 of 4.8: ~0.5 %); the exact top sum
            ``n_blocks·upper`` is returned directly (all ratios at ``upper``).

    Returns:
        ``count`` tuples of ``n_blocks`` ratios, each a multiple of ``step`` in ``[0, upper]``, each
        tuple summing (on the integer scale) to an integer inside ``sum_range``.

    Raises:
        ConfigError: An argument is out of range (the message names it), or ``max_tries`` ran out.
    """
    _check_count("n_blocks", n_blocks, 1)
    _check_count("count", count, 0)
    _check_count("max_tries", max_tries, 1)
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha: must be a finite number > 0, got {alpha!r}")
    grid = _grid(upper, step)
    lo_k, hi_k = _sum_bounds_k(sum_range, n_blocks, upper, grid)
    rng = np.random.default_rng(seed)
    log.debug(
        "uniform-sum sampling: %d x %d ratios, integer sums %d..%d, U=%d", count, n_blocks, lo_k, hi_k, grid.upper_k
    )
    out = []
    for _ in range(count):
        total = int(rng.integers(lo_k, hi_k + 1))  # line 5, on the integer scale
        ks = _draw_sum_k(rng, n_blocks, total, grid.upper_k, float(alpha), max_tries)
        out.append(grid.to_ratios(ks))
    return out


def naive_sample(
    n_blocks: int, upper: float = 0.8, count: int = 1, seed: Seed = None, step: float = 0.1
) -> list[RatioVector]:
    """Naive sampling, the baseline of Table 6 of the MixA-Q supplementary material: every ratio
    independently uniform on ``{0, step, …, upper}``.

    Args:
        n_blocks: Number of ratios per vector.
        upper: Largest ratio, a multiple of ``step`` in ``(0, 1]``.
        count: Number of vectors.
        seed: An int, a ``numpy.random.Generator`` or ``None``, as in :func:`uniform_sum_sample`.
        step: Grid spacing; ``1/step`` an integer.

    Returns:
        ``count`` tuples of ``n_blocks`` ratios on the grid.
    """
    _check_count("n_blocks", n_blocks, 1)
    _check_count("count", count, 0)
    grid = _grid(upper, step)
    ks = np.random.default_rng(seed).integers(0, grid.upper_k + 1, size=(count, n_blocks))
    return [grid.to_ratios(row) for row in ks]


def sum_range_from_cost(
    rel_cost_range: tuple[float, float], n_blocks: int, saving_per_window: float = 0.5
) -> tuple[float, float]:
    """Range of the sum of the ratios that gives a relative-cost range (MixA-Q supplementary §6.1).

    Assuming every group costs the same (as the paper does while sampling), compressing a fraction
    ``r_i`` of group i's windows saves ``saving_per_window·r_i`` of its cost, so the relative cost is
    ``1 − saving·Σr_i / n`` and ``Σr_i = (1 − cost)·n / saving``. Swin-T, cost ``(0.65, 0.95)``, 50 %
    saving (MixA-Q), 6 groups: ``[(1−0.95)·6·2, (1−0.65)·6·2] = (0.6, 4.2)``. Use ``saving=1.0`` for
    window pruning (SparseViT).

    The bounds are rounded to 10 decimals (float noise only: ``(1−0.95)·6·2`` is
    ``0.6000000000000005`` in binary). They are not clipped to ``n_blocks·upper``: the sampler
    rejects a range it cannot reach.

    Args:
        rel_cost_range: ``(low, high)`` relative cost, ``0 <= low <= high <= 1``.
        n_blocks: Number of ratios (block groups).
        saving_per_window: Fraction of a window's cost saved when it is compressed, in ``(0, 1]``.

    Returns:
        ``(s_min, s_max)``.
    """
    _check_count("n_blocks", n_blocks, 1)
    if len(rel_cost_range) != 2:
        raise ConfigError(f"rel_cost_range: must be (low, high), got {rel_cost_range!r}")
    low, high = (float(c) for c in rel_cost_range)
    if not (0 <= low <= high <= 1):
        raise ConfigError(f"rel_cost_range: need 0 <= low <= high <= 1, got ({low:g}, {high:g})")
    if not (isinstance(saving_per_window, int | float) and 0 < saving_per_window <= 1):
        raise ConfigError(f"saving_per_window: must be in (0, 1], got {saving_per_window!r}")
    scale = n_blocks / saving_per_window
    return round((1 - high) * scale, 10), round((1 - low) * scale, 10)


@dataclass(frozen=True)
class RatioGroup:
    """Blocks sharing one compression ratio.

    Attributes:
        name: ``layers.<stage>.blocks.<first>-<last>`` for a pair, ``layers.<stage>.blocks.<i>`` alone.
        stage: Stage index.
        blocks: Module names of the blocks (timm Swin naming, ``layers.<stage>.blocks.<i>``).
    """

    name: str
    stage: int
    blocks: tuple[str, ...]


def ratio_groups(depths: Sequence[int], prefix: str = "layers") -> list[RatioGroup]:
    """One compression ratio per pair of consecutive blocks of a stage (MixA-Q supplementary §6.1–6.2).

    Pairs never cross stages (the window importance is computed per stage) and follow
    Swin's regular/shifted alternation: blocks (0, 1), (2, 3), … . In a stage of odd depth the last
    block forms a group of its own, rather than a pair absorbing it into a triple: a triple would cost
    ~1.5 pairs and break the equal-cost assumption behind :func:`sum_range_from_cost`.

    - Swin-T ``(2, 2, 6, 2)``: 6 groups, ``layers.0.blocks.0-1``, ``layers.1.blocks.0-1``,
      ``layers.2.blocks.0-1``, ``layers.2.blocks.2-3``, ``layers.2.blocks.4-5``, ``layers.3.blocks.0-1``.
    - Swin-S / Swin-B ``(2, 2, 18, 2)``: 12 groups (1 + 1 + 9 + 1).
    - An odd stage, ``(2, 2, 5, 2)``: 6 groups, stage 2 gives ``0-1``, ``2-3`` and ``layers.2.blocks.4``.

    Args:
        depths: Number of blocks of each stage.
        prefix: Module path of the stage list (``layers`` in timm's ``SwinTransformer``).

    Returns:
        The groups in forward order.
    """
    if len(depths) == 0:
        raise ConfigError("depths: must list at least one stage")
    groups = []
    for stage, depth in enumerate(depths):
        _check_count(f"depths[{stage}]", depth, 1)
        for first in range(0, depth, 2):
            members = tuple(range(first, min(first + 2, depth)))
            blocks = tuple(f"{prefix}.{stage}.blocks.{i}" for i in members)
            label = f"{members[0]}-{members[-1]}" if len(members) == 2 else f"{members[0]}"
            groups.append(RatioGroup(name=f"{prefix}.{stage}.blocks.{label}", stage=stage, blocks=blocks))
    return groups
