"""Evaluation: classification metrics."""

from vitcompress.eval.classification import Metrics, evaluate

__all__ = ["Metrics", "evaluate"]
