"""Cost model: MACs, BOPs and size per op; per-block MACs for the equivalent-activation-bits formula.

BOPs = Σ over ops of MACs × weight bits × activation bits (the two operands' bits for the
activation × activation matmuls of attention); relative BOPs = BOPs / BOPs with everything at 32 bit.
"""

from vitcompress.cost.counter import block_key, cost, macs_by_block
from vitcompress.cost.report import CostReport, LayerCost
from vitcompress.cost.table import format_table

__all__ = ["CostReport", "LayerCost", "block_key", "cost", "format_table", "macs_by_block"]
