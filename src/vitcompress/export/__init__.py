"""Deployment: ONNX QDQ export of quantized models, ONNX Runtime and OpenVINO (CPU) runners, latency benchmark.

``export_onnx(model, path)`` writes a quantized model as a QuantizeLinear/DequantizeLinear graph
that ONNX Runtime and OpenVINO run with integer kernels (a float model as the FP32 baseline);
``ort_session``/``OrtModule`` and ``ov_compile``/``OvModule`` run it; ``benchmark_deploy`` times
torch eager FP32 and each runtime's FP32 and INT8 (and OpenVINO's bf16) next to the BOPs ratio.
Design and measurements: ``docs/deploy.md``.

Imports are lazy (as in the top-level package) so that the CLI can build its parser without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Timing": "vitcompress.export.bench",
    "benchmark_deploy": "vitcompress.export.bench",
    "format_bench": "vitcompress.export.bench",
    "Layout": "vitcompress.export.convert",
    "PointExport": "vitcompress.export.convert",
    "to_export_model": "vitcompress.export.convert",
    "ExportReport": "vitcompress.export.onnx_export",
    "export_onnx": "vitcompress.export.onnx_export",
    "is_quantized": "vitcompress.export.onnx_export",
    "OvModule": "vitcompress.export.openvino",
    "ov_compile": "vitcompress.export.openvino",
    "ov_matmul_precisions": "vitcompress.export.openvino",
    "ov_node_precisions": "vitcompress.export.openvino",
    "ov_profile_ops": "vitcompress.export.openvino",
    "OrtModule": "vitcompress.export.runtime",
    "kernel_counts": "vitcompress.export.runtime",
    "op_counts": "vitcompress.export.runtime",
    "ort_session": "vitcompress.export.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vitcompress.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
