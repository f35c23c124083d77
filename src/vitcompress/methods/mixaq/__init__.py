"""MixA-Q: window-level mixed-precision activations for Swin.

Wang, Rai, De la Parra, Kumar, "MixA-Q: Revisiting Activation Sparsity for Vision Transformers from a
Mixed-Precision Quantization Perspective", ICCV 2025, arXiv:2507.19131 (the uniform-sum sampler,
Algorithm 1, and the equivalent activation bits are in its supplementary material, §6.1–6.2).
User guide: ``docs/mixaq.md``.

- :mod:`~vitcompress.methods.mixaq.config`: :class:`MixAQConfig`, what ``compress_`` runs;
- :mod:`~vitcompress.methods.mixaq.step`: the ``compress_`` handler (:func:`mixaq_step`), its report
  section, and the layout builder that lets :func:`vitcompress.restore` rebuild a saved MixA-Q model;
- :mod:`~vitcompress.methods.mixaq.two_branch`: the two-branch Swin block and the window importance;
- :mod:`~vitcompress.methods.mixaq.model`: the model-level verbs :func:`mixaq_` (training-free: PTQ +
  two-branch blocks + low-branch calibration), :func:`two_branch_`, :func:`set_ratios`, :func:`calibrate_low`;
- :mod:`~vitcompress.methods.mixaq.bops`: BOPs of a configuration (:func:`mixed_cost`, :func:`act_bits_eq`);
- :mod:`~vitcompress.methods.mixaq.search`: the NSGA-II search of the ratios (:class:`MixAQSearchConfig`);
- :mod:`~vitcompress.methods.mixaq.saqa`: SAQA fine-tuning (:class:`SAQAConfig`);
- pure math, no model: the ratio samplers (:func:`uniform_sum_sample`, :func:`naive_sample`,
  :func:`sum_range_from_cost`), the block grouping (:func:`ratio_groups`) and the equivalent activation
  bits (:func:`equivalent_bits`, :func:`relative_cost`);
- :mod:`~vitcompress.methods.mixaq.cli`: ``vitcompress compress mixaq``, ``mixaq sample``, ``mixaq eqbits``.
"""

from vitcompress.methods.mixaq.bops import act_bits_eq, effective_ratios, group_macs, mixed_cost
from vitcompress.methods.mixaq.config import MixAQConfig
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
from vitcompress.methods.mixaq.saqa import SAQAConfig, saqa_
from vitcompress.methods.mixaq.search import MixAQSearchConfig, search_ratios
from vitcompress.methods.mixaq.step import mixaq_step  # registers the handler

__all__ = [
    "METHOD_SAVING",
    "MixAQConfig",
    "MixAQSearchConfig",
    "SAQAConfig",
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
    "mixaq_step",
    "mixed_cost",
    "model_groups",
    "naive_sample",
    "ratio_groups",
    "relative_cost",
    "saqa_",
    "search_ratios",
    "set_ratios",
    "sum_range_from_cost",
    "two_branch_",
    "uniform_sum_sample",
]
