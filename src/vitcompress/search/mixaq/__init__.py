"""MixA-Q (METHODS.md §4, seeds 000 and 001): window-level mixed-precision activations for Swin.

This part is pure math, no model: the compression-ratio samplers of seed 000 Algorithm 1
(:func:`uniform_sum_sample`, :func:`naive_sample`), the sum range of a relative-cost range
(:func:`sum_range_from_cost`), the block grouping that gets one ratio per pair of blocks
(:func:`ratio_groups`), and the equivalent activation bits of seed 000 eq. 3–5
(:func:`equivalent_bits`, :func:`relative_cost`).
"""

from vitcompress.search.mixaq.eqbits import (
    METHOD_SAVING,
    SWIN_T_C,
    SWIN_T_GMACS,
    equivalent_bits,
    relative_cost,
)
from vitcompress.search.mixaq.sampling import (
    RatioGroup,
    naive_sample,
    ratio_groups,
    sum_range_from_cost,
    uniform_sum_sample,
)

__all__ = [
    "METHOD_SAVING",
    "SWIN_T_C",
    "SWIN_T_GMACS",
    "RatioGroup",
    "equivalent_bits",
    "naive_sample",
    "ratio_groups",
    "relative_cost",
    "sum_range_from_cost",
    "uniform_sum_sample",
]
