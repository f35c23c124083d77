"""Cost model: MACs, BOPs and size per op (METHODS §0.5); per-block MACs for equivalent bits (§4.5)."""

from vitcompress.cost.counter import block_key, cost, macs_by_block
from vitcompress.cost.report import CostReport, LayerCost
from vitcompress.cost.table import format_table

__all__ = ["CostReport", "LayerCost", "block_key", "cost", "format_table", "macs_by_block"]
