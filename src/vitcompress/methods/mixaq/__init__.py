"""MixA-Q (METHODS.md §4, seeds 000 and 001): window-level mixed-precision activations for Swin.

This part is pure math, no model: the compression-ratio samplers of seed 000 Algorithm 1
(:func:`uniform_sum_sample`, :func:`naive_sample`), the sum range of a relative-cost range
(:func:`sum_range_from_cost`), the block grouping that gets one ratio per pair of blocks
(:func:`ratio_groups`), and the equivalent activation bits of seed 000 eq. 3–5
(:func:`equivalent_bits`, :func:`relative_cost`).

On a model (timm Swin): :func:`mixaq_` (training-free: PTQ + two-branch blocks + low-branch
calibration), :func:`two_branch_`, :func:`set_ratios`, :func:`calibrate_low`; BOPs of a configuration
with :func:`mixed_cost` and :func:`act_bits_eq`.
"""

from vitcompress.methods.mixaq.bops import act_bits_eq, effective_ratios, group_macs, mixed_cost
from vitcompress.methods.mixaq.eqbits import (
    METHOD_SAVING,
    SWIN_T_C,
    SWIN_T_GMACS,
    equivalent_bits,
    relative_cost,
)
from vitcompress.methods.mixaq.model import (
    calibrate_low,
    get_ratios,
    mixaq_,
    model_groups,
    set_ratios,
    two_branch_,
)
from vitcompress.methods.mixaq.sampling import (
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
    "act_bits_eq",
    "calibrate_low",
    "effective_ratios",
    "equivalent_bits",
    "get_ratios",
    "group_macs",
    "mixaq_",
    "mixed_cost",
    "model_groups",
    "naive_sample",
    "ratio_groups",
    "relative_cost",
    "set_ratios",
    "sum_range_from_cost",
    "two_branch_",
    "uniform_sum_sample",
]
