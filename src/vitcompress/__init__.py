"""vitcompress: compress vision transformers (ViT, DeiT, Swin) for deployment.

Imports are lazy so that ``import vitcompress`` stays fast: no torch import, no data loading.
The cost model is ``from vitcompress.cost import cost`` (a top-level ``cost`` would be shadowed by
the ``vitcompress.cost`` package once it is imported).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "compress_": "vitcompress.api",
    "Result": "vitcompress.result",
    "run_job": "vitcompress.jobs",
    "JobConfig": "vitcompress.jobs",
    "ModelSource": "vitcompress.models.source",
    "EvolQConfig": "vitcompress.methods.evolq",
    "FLBQConfig": "vitcompress.methods.flbq",
    "GPUSQConfig": "vitcompress.methods.gpusq",
    "MixAQConfig": "vitcompress.methods.mixaq",
    "load_model": "vitcompress.models.registry",
    "list_models": "vitcompress.models.registry",
    "evaluate": "vitcompress.eval.classification",
    "Metrics": "vitcompress.eval.classification",
    "load_dataset": "vitcompress.data.datasets",
    "calibration_subset": "vitcompress.data.datasets",
    "quantize_": "vitcompress.quantize",
    "save": "vitcompress.quantize",
    "restore": "vitcompress.quantize",
    "Recipe": "vitcompress.config",
    "QuantSpec": "vitcompress.config",
    "get_preset": "vitcompress.config",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vitcompress' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
