"""F-LBQ bit allocation (METHODS.md §2, seed 003): choose a bit width per unit under a bit budget.

The solvers work on distortion curves alone (no model): :class:`Curves` holds ``D_u(b)`` and the
size ``n_u`` of every unit; :func:`lagrangian_allocate` (F-LBQ-LG) and :func:`dp_allocate`
(F-LBQ-DP) turn them into a :class:`BitPlan`.
"""

from vitcompress.search.bitalloc.curves import Curves, UnitCurve
from vitcompress.search.bitalloc.solvers import (
    SOLVERS,
    BitPlan,
    capacity_bits,
    dp_allocate,
    lagrangian_allocate,
    min_bits_from_margin,
)

__all__ = [
    "SOLVERS",
    "BitPlan",
    "Curves",
    "UnitCurve",
    "capacity_bits",
    "dp_allocate",
    "lagrangian_allocate",
    "min_bits_from_margin",
]
