"""Deployment: ONNX QDQ export of quantized models, ONNX Runtime (CPU) sessions, latency benchmark.

``export_onnx(model, path)`` writes a quantized model as a QuantizeLinear/DequantizeLinear graph
that ONNX Runtime runs with integer kernels (a float model as the FP32 baseline);
``ort_session``/``OrtModule`` run it; ``benchmark_deploy`` times torch eager FP32, ORT FP32 and
ORT INT8 next to the BOPs ratio. Design and measurements: ``docs/deploy.md``.
"""

from vitcompress.export.bench import Timing, benchmark_deploy, format_bench
from vitcompress.export.convert import PointExport, to_export_model
from vitcompress.export.onnx_export import ExportReport, export_onnx, is_quantized
from vitcompress.export.runtime import OrtModule, kernel_counts, op_counts, ort_session

__all__ = ["ExportReport", "OrtModule", "PointExport", "Timing", "benchmark_deploy", "export_onnx",
           "format_bench", "is_quantized", "kernel_counts", "op_counts", "ort_session", "to_export_model"]
