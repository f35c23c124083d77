"""OpenVINO (CPU plugin) for exported ONNX files: compile, run, count node precisions, profile.

OpenVINO reads the same QDQ ONNX file as ONNX Runtime. Its low-precision transformations turn
``QuantizeLinear → DequantizeLinear`` into ``FakeQuantize`` plus a de-quantization that they move
through the graph until it can be folded into the consumer: ``FullyConnected`` / ``MatMul`` /
``Convolution`` then run on u8·i8 kernels and scale their int32 result. The compiled model's
*runtime model* lists every node as it executes, with its ``runtimePrecision``;
:func:`ov_node_precisions` tallies it, :func:`ov_matmul_precisions` maps every ONNX matmul / conv of
the file to the precision it runs in, and :func:`ov_profile_ops` times each node type.

Float arithmetic follows ``precision``: ``f32`` (exact float ops, the INT8 graph's setting: its float
ops then compute what the fake-quant model computes), ``bf16`` (OpenVINO's default on CPUs with
bf16 arithmetic, :func:`has_bf16`) or ``default`` (whatever the plugin picks).

``openvino`` is an optional dependency; importing this module does not need it.
"""

from __future__ import annotations

import collections
import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitcompress.errors import ConfigError, DataError

PRECISIONS = ("f32", "bf16", "default")
COMPUTE_TYPES = frozenset(
    {"FullyConnected", "FullyConnectedQuantizedLegacy", "MatMul", "Convolution", "Subgraph", "Deconvolution"}
)
INTEGER_PRECISIONS = frozenset({"u8", "i8"})
# ONNX ops whose work runs on matmul / conv kernels (the ones that should be integer)
ONNX_COMPUTE_OPS = frozenset({"MatMul", "Gemm", "Conv"})


def require_openvino():
    """The ``openvino`` module, or a ConfigError saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(
            "runtime 'openvino' needs the openvino package (pip install openvino, or the onnx extra)"
        ) from e
    return openvino


def available() -> bool:
    """Whether OpenVINO can be imported."""
    try:
        require_openvino()
    except ConfigError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _core():
    return require_openvino().Core()


def has_bf16() -> bool:
    """Whether this CPU runs bf16 arithmetic (OpenVINO's default precision for float models there)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ov_compile(path: str | Path, threads: int | None = 1, precision: str = "f32", perf_count: bool = False):
    """An OpenVINO ``CompiledModel`` of an ONNX file on the CPU plugin.

    Args:
        path: the ONNX file.
        threads: inference threads (None: the plugin's default); one stream, latency hint, threads
            pinned to cores.
        precision: float arithmetic, one of ``PRECISIONS`` (module docstring).
        perf_count: collect per-node timings (:func:`ov_profile_ops`).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if not Path(path).is_file():
        raise DataError(f"model: ONNX file {path} does not exist")
    config: dict = {"NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": True}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if precision != "default":
        config["INFERENCE_PRECISION_HINT"] = precision
    if perf_count:
        config["PERF_COUNT"] = True
    core = _core()
    return core.compile_model(core.read_model(str(path)), "CPU", config)


class OvModule(nn.Module):
    """An OpenVINO compiled model as a module: ``forward(x)`` runs one synchronous inference
    (float32 in, torch tensor out), like :class:`vitcompress.export.runtime.OrtModule`."""

    def __init__(self, compiled):
        super().__init__()
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.request.infer({0: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def _rt(info, key: str) -> str:
    value = info[key]
    return value.astype(str) if hasattr(value, "astype") else str(value)


def runtime_nodes(compiled) -> list[dict]:
    """The runtime model's nodes in execution order: ``type``, ``precision``, ``original`` (ONNX node
    names fused into it). Constants, inputs and outputs are left out."""
    out = []
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = _rt(info, "layerType")
        if kind in ("Const", "Input", "Output"):
            continue
        names = [n for n in _rt(info, "originalLayersNames").split(",") if n]
        out.append({"type": kind, "precision": _rt(info, "runtimePrecision"), "original": names})
    return out


def ov_node_precisions(path: str | Path, threads: int | None = 1, precision: str = "f32") -> dict:
    """What OpenVINO runs for an ONNX file, by node type and precision.

    Returns:
        ``{"nodes": {"Type precision": n}, "integer": n, "float_compute": n, "float_compute_ops":
        {"Type": n}}``: ``integer`` counts matmul / conv / fused-subgraph nodes (``COMPUTE_TYPES``)
        running in u8/i8, ``float_compute`` those running in a float precision.
    """
    nodes = runtime_nodes(ov_compile(path, threads, precision))
    counts = collections.Counter(f"{n['type']} {n['precision']}" for n in nodes)
    compute = [n for n in nodes if n["type"] in COMPUTE_TYPES]
    floats = [n for n in compute if n["precision"] not in INTEGER_PRECISIONS]
    return {
        "nodes": dict(counts.most_common()),
        "integer": len(compute) - len(floats),
        "float_compute": len(floats),
        "float_compute_ops": dict(collections.Counter(n["type"] for n in floats)),
    }


def ov_matmul_precisions(path: str | Path, threads: int | None = 1, precision: str = "f32") -> dict[str, str]:
    """Every ONNX ``MatMul`` / ``Gemm`` / ``Conv`` node of the file -> the precision OpenVINO runs it in.

    A node fused into a runtime node of ``COMPUTE_TYPES`` takes that node's precision (``u8``/``i8``:
    integer kernels; OpenVINO may rename it ``NAME/WithoutBiases``); a node found nowhere is
    reported as ``"missing"``.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    wanted = [n.name for n in graph.node if n.op_type in ONNX_COMPUTE_OPS]
    found: dict[str, str] = {}
    for node in runtime_nodes(ov_compile(path, threads, precision)):
        if node["type"] in COMPUTE_TYPES:
            for name in node["original"]:
                parts = name.split("/")
                for i in range(2, len(parts) + 1):  # the name and its parents: Conv/WithoutBiases -> Conv
                    found.setdefault("/".join(parts[:i]), node["precision"])
    return {name: found.get(name, "missing") for name in wanted}


def _exec_precision(exec_type: str) -> str:
    tail = exec_type.rsplit("_", 1)[-1].lower()
    return {"i8": "int8", "u8": "int8", "f32": "f32", "bf16": "bf16", "f16": "f16"}.get(tail, tail)


def ov_profile_ops(
    path: str | Path, x: torch.Tensor, threads: int | None = 1, runs: int = 5, precision: str = "f32"
) -> dict[str, float]:
    """Milliseconds per run in each node type of the compiled model (OpenVINO's performance counters),
    keyed ``"Type (precision of its kernel)"``, largest first. One untimed run, then ``runs`` runs."""
    compiled = ov_compile(path, threads, precision, perf_count=True)
    request = compiled.create_infer_request()
    feed = {0: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)}
    request.infer(feed)
    per_op: collections.Counter = collections.Counter()
    for _ in range(runs):
        request.infer(feed)
        for p in request.get_profiling_info():
            if p.status == p.Status.EXECUTED:
                key = f"{p.node_type} ({_exec_precision(p.exec_type)})"
                per_op[key] += p.real_time.total_seconds() * 1e3 / runs
    return {op: round(ms, 3) for op, ms in per_op.most_common()}
