"""Cost model: MACs, BOPs, size (METHODS §0.5)."""

from vitcompress.cost.counter import CostReport, LayerCost, cost, macs_by_block
from vitcompress.cost.table import format_table

__all__ = ["CostReport", "LayerCost", "cost", "format_table", "macs_by_block"]
