"""Evol-Q (METHODS.md §1, seed 002): evolutionary search of a PTQ model's quantization scales.

``evolq_(model, calib, EvolQConfig(...))`` refines the per-channel weight scales of each block's
attention layers in place against an infoNCE fitness on the logits and returns an
:class:`EvolQResult` (the scales and the per-pass history). Runs are resumable (``state_path``).
"""

from vitcompress.search.evolq.config import BLOCK_ORDERS, FITNESSES, TARGETS, EvolQConfig
from vitcompress.search.evolq.fitness import fitness_fn, infonce
from vitcompress.search.evolq.search import EvolQResult, evolq_

__all__ = ["BLOCK_ORDERS", "FITNESSES", "TARGETS", "EvolQConfig", "EvolQResult", "evolq_", "fitness_fn", "infonce"]
