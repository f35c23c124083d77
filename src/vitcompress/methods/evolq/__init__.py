"""Evol-Q: evolutionary search of a PTQ model's quantization scales.

Frumkin, Gope, Marculescu, "Jumping through Local Minima: Quantization in the Loss Landscape of Vision
Transformers", ICCV 2023, arXiv:2308.10814.

``vitcompress.compress_(model, EvolQConfig(recipe=...), calib)`` quantizes a float model with the
recipe, then refines it; ``evolq_(model, calib, EvolQConfig(...))`` is the search alone, on a model
quantized already: it refines the per-channel weight scales of each block's attention layers in
place against an infoNCE fitness on the logits and returns an :class:`EvolQResult` (the scales and
the per-pass history). Runs are resumable (``state_path``; ``state_dir`` of ``compress_``).

Files: ``config`` (:class:`EvolQConfig`), ``search`` (``evolq_``), ``fitness``, ``state`` (resume),
``step`` (the ``compress_`` handler), ``report`` (passes chart, report section), ``cli``
(``vitcompress compress evolq``), ``allocator`` (glibc settings for the CLI and benchmarks).
"""

from vitcompress.methods.evolq.config import BLOCK_ORDERS, FITNESSES, TARGETS, EvolQConfig
from vitcompress.methods.evolq.fitness import fitness_fn, infonce
from vitcompress.methods.evolq.search import EvolQResult, evolq_
from vitcompress.methods.evolq.step import evolq_step

__all__ = [
    "BLOCK_ORDERS",
    "FITNESSES",
    "TARGETS",
    "EvolQConfig",
    "EvolQResult",
    "evolq_",
    "evolq_step",
    "fitness_fn",
    "infonce",
]
