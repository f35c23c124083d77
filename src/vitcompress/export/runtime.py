"""ONNX Runtime (CPU) sessions for exported models: run, evaluate, and count the kernels ORT chose.

ORT turns the QDQ graph into integer kernels during graph optimization (``QDQ`` transformers,
level ``extended`` and above): ``DequantizeLinear → MatMul`` with int8 weights becomes
``MatMulIntegerToFloat`` (u8·s8 → int32 → float) and ``DQ → MatMul → Q`` becomes ``QLinearMatMul``.
:func:`kernel_counts` saves the optimized graph and tallies which ops ran integer and which stayed
float, the first thing to look at when INT8 is not faster.
"""

from __future__ import annotations

import collections
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitcompress.errors import ConfigError, DataError

log = logging.getLogger(__name__)

OPT_LEVELS = ("disable", "basic", "extended", "all")
# ops that compute on integers (ORT contrib ops included)
INTEGER_OPS = frozenset(
    {
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QLinearConv",
        "ConvInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSoftmax",
        "QLinearSigmoid",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearLeakyRelu",
        "QLinearReduceMean",
        "QAttention",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    }
)
COMPUTE_FLOAT_OPS = frozenset(
    {"MatMul", "Gemm", "Conv", "FusedConv", "FusedMatMul", "FusedGemm", "Attention", "MultiHeadAttention"}
)
CONVERT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})


LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})


def conv_per_channel_output_qdq(path: str | Path) -> list[str]:
    """QuantizeLinear nodes with a per-channel zero point that quantize a Conv's output (through layout ops only).

    ONNX Runtime (1.32) pushes the layout ops' Transpose below such a QuantizeLinear and then fuses
    ``DQ → Conv → Q`` into a ``QLinearConv``, whose CPU kernel refuses a per-channel output zero point at run
    time ("result zero point must be a scalar"). A Swin's patch embedding followed by a per-channel (PTF)
    LayerNorm input quantizer is that pattern when nothing (a bias-correction Add) sits in between.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    sizes = {t.name: int(np.prod(t.dims)) if t.dims else 1 for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or sizes.get(node.input[2], 1) <= 1:
            continue
        src = producer.get(node.input[0])
        while src is not None and src.op_type in LAYOUT_OPS:
            src = producer.get(src.input[0])
        if src is not None and src.op_type == "Conv":
            found.append(node.name)
    return found


def ort_session(
    path: str | Path, threads: int | None = None, opt_level: str = "all", optimized_path: str | Path | None = None
):
    """An ``onnxruntime.InferenceSession`` on the CPU provider.

    Args:
        path: the ONNX file.
        threads: intra-op threads (None: ORT's default, one per physical core); inter-op is 1.
        opt_level: graph optimization level, one of ``OPT_LEVELS``.
        optimized_path: if given, ORT writes the optimized graph there (to count kernels).
    """
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise ConfigError(f"opt_level must be one of {list(OPT_LEVELS)}, got {opt_level!r}")
    if not Path(path).is_file():
        raise DataError(f"model: ONNX file {path} does not exist")
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    if threads:
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the "optimized model is hardware specific" notice is expected
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if opt_level in ("extended", "all") and conv_per_channel_output_qdq(path):
        # ORT would build a QLinearConv its kernel refuses (see conv_per_channel_output_qdq): basic optimizations
        # only, so the graph runs (its QDQ pairs then compute in float)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        log.warning(
            "%s: a Conv output is quantized per channel, which ONNX Runtime's QDQ fusion cannot run: "
            "graph optimizations at level basic (integer kernels off)",
            path,
        )
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An ORT session as a module: ``forward(x)`` runs it (float32 numpy in, torch tensor out), so
    :func:`vitcompress.evaluate` and the benchmark treat it like the torch model."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(out[0])


def op_counts(path: str | Path) -> dict[str, int]:
    """Node count per op type of an ONNX file (top-level graph), most frequent first."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(collections.Counter(n.op_type for n in model.graph.node).most_common())


def kernel_counts(path: str | Path, threads: int | None = 1, opt_level: str = "all") -> dict:
    """Ops of the graph ORT actually runs after optimization, grouped.

    Returns:
        ``{"ops": {op: n}, "integer": n, "float_compute": n, "convert": n, "float_compute_ops": {op: n}}``:
        integer kernels (``INTEGER_OPS``), float matmul/conv-like kernels (what stayed float) and
        quantize/dequantize conversions (layout and precision changes between them).
    """
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort_session(path, threads, opt_level, optimized)
        ops = op_counts(optimized)
    return {
        "ops": ops,
        "integer": sum(n for op, n in ops.items() if op in INTEGER_OPS),
        "float_compute": sum(n for op, n in ops.items() if op in COMPUTE_FLOAT_OPS),
        "convert": sum(n for op, n in ops.items() if op in CONVERT_OPS),
        "float_compute_ops": {op: n for op, n in ops.items() if op in COMPUTE_FLOAT_OPS},
    }


def profile_ops(
    path: str | Path, x: torch.Tensor, threads: int | None = 1, runs: int = 5, opt_level: str = "all"
) -> dict[str, float]:
    """Milliseconds per run spent in each op type of the optimized graph (ORT's profiler), largest first.

    One untimed run first; then ``runs`` profiled runs of input ``x``. The sum is below the wall
    time by the session's own overhead (input binding, thread hand-offs).
    """
    import json

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, opt_level)
        so = ort.SessionOptions()
        so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / "profile")
        so.graph_optimization_level = sess.get_session_options().graph_optimization_level
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads or 0, 1, 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: np.ascontiguousarray(x.numpy(), np.float32)}
        sess.run(None, feed)
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1000.0 / (runs + 1)
    return {op: round(ms, 3) for op, ms in per_op.most_common()}
