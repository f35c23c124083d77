"""GPUSQ-ViT: N:M structured sparsity with distillation, then sparse-distillation-aware QAT.

Yu, Chen, Gan, Fan, "Boost Vision Transformer with GPU-Friendly Sparsity and Quantization", CVPR 2023,
arXiv:2305.10727. User guide: ``docs/gpusq.md``.

- :mod:`~vitcompress.methods.gpusq.config`: :class:`GPUSQConfig`, the ``gpusq-int8`` / ``gpusq-int4``
  presets and their quantization recipe;
- :mod:`~vitcompress.methods.gpusq.algorithm`: the two stages (:func:`sparse_distill_`,
  :func:`sparse_qat_`) and both together (:func:`gpusq_`);
- :mod:`~vitcompress.methods.gpusq.step`: the :func:`vitcompress.compress_` handler and report section;
- :mod:`~vitcompress.methods.gpusq.cli`: ``vitcompress compress gpusq``.

The shared pieces it builds on: :mod:`vitcompress.sparsity` (masks, accounting),
:mod:`vitcompress.train.distill` (losses, weight factors), :mod:`vitcompress.train.qat` and
:mod:`vitcompress.train.trainer`.
"""

from vitcompress.methods.gpusq.algorithm import gpusq_, sparse_distill_, sparse_qat_
from vitcompress.methods.gpusq.config import GPUSQ_RECIPES, GPUSQConfig, gpusq_preset, gpusq_quant_recipe
from vitcompress.methods.gpusq.step import gpusq_step  # registers the handler

__all__ = [
    "GPUSQConfig",
    "GPUSQ_RECIPES",
    "gpusq_",
    "gpusq_preset",
    "gpusq_quant_recipe",
    "gpusq_step",
    "sparse_distill_",
    "sparse_qat_",
]
