"""Latency and throughput of the FP32 and INT8 ONNX files in ONNX Runtime and OpenVINO, next to the predicted cost.

Engines: ``torch-fp32`` (eager, the float model), and per runtime ``<runtime>-fp32`` and
``<runtime>-int8`` (the same two exported files), plus ``openvino-bf16`` (the FP32 file in
OpenVINO's default bf16 arithmetic) where the CPU has bf16. OpenVINO runs the INT8 file with f32
float ops, so that its non-integer ops compute what the fake-quant model computes.

Timing protocol: per engine and batch size, ``warmup`` untimed runs, then ``repeats`` timed runs
split into ``rounds`` that alternate between the engines (A B C A B C …), so a burst of load from
other processes on a shared machine hits every engine rather than one. Every run's wall time is
kept: the report gives min / median / p90 / max, so the machine's noise is visible, and throughput
as ``batch / median``. The predicted speed-up is the BOPs ratio of :func:`vitcompress.cost.cost`
(FP32 BOPs / quantized BOPs), an upper bound that ignores memory traffic and float ops.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from vitcompress.device import describe, model_device, synchronize, to_device
from vitcompress.errors import ConfigError

log = logging.getLogger(__name__)

RUNTIMES = ("ort", "openvino")
RUNTIME_CHOICES = (*RUNTIMES, "all")
ENGINES = ("torch-fp32", "ort-fp32", "ort-int8", "openvino-fp32", "openvino-bf16", "openvino-int8")


@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of one engine at one batch size (seconds per batch)."""

    engine: str
    batch: int
    runs: int
    min_s: float
    median_s: float
    p90_s: float
    max_s: float
    throughput: float  # images per second at the median latency

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(engine: str, batch: int, seconds: list[float]) -> Timing:
    """A :class:`Timing` from per-run wall times (p90: nearest-rank)."""
    s = sorted(seconds)
    p90 = s[min(len(s) - 1, max(0, int(round(0.9 * len(s))) - 1))]
    med = statistics.median(s)
    return Timing(engine, batch, len(s), s[0], med, p90, s[-1], batch / med)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads for the block, then restore them."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def time_engines(
    engines: dict[str, Callable[[torch.Tensor], object]],
    x: torch.Tensor,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
) -> list[Timing]:
    """Time each engine on batch ``x``: ``warmup`` runs each, then ``repeats`` runs in alternating rounds."""
    if warmup < 0 or repeats < 1 or rounds < 1:
        raise ConfigError(f"warmup must be >= 0, repeats and rounds >= 1; got {warmup}, {repeats}, {rounds}")
    for fn in engines.values():
        for _ in range(warmup):
            fn(x)
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    per_round = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]
    total = repeats * len(engines)
    with tqdm(total=total, desc=f"bench batch {len(x)}", leave=False) as bar:
        for n in per_round:
            for name, fn in engines.items():
                for _ in range(n):
                    t0 = time.perf_counter()
                    fn(x)
                    seconds[name].append(time.perf_counter() - t0)
                    bar.update()
    return [summarize(name, len(x), s) for name, s in seconds.items()]


def resolve_runtimes(runtime: str) -> tuple[str, ...]:
    """``ort`` / ``openvino`` / ``all`` -> the runtimes to time; ``all`` is every installed one.

    Raises:
        ConfigError: an unknown name, or ``openvino`` asked for and not installed.
    """
    from vitcompress.export import openvino

    if runtime not in RUNTIME_CHOICES:
        raise ConfigError(f"runtime must be one of {list(RUNTIME_CHOICES)}, got {runtime!r}")
    if runtime == "openvino":
        openvino.require_openvino()
    if runtime != "all":
        return (runtime,)
    if not openvino.available():
        log.warning("runtime 'all': openvino is not installed, timing ONNX Runtime only")
        return ("ort",)
    return RUNTIMES


class TorchEngine:
    """Eager torch on the model's device: the timing batch is moved there once (not timed), each call waits for the
    device to finish, and the logits come back on the CPU only when asked (:meth:`host`)."""

    def __init__(self, model: nn.Module):
        self.model, self.device = model.eval(), model_device(model)
        self._src: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> object:
        if x is not self._src:
            self._src, self._dev = x, to_device(x, self.device)
            synchronize(self.device)
        out = self.model(self._dev)
        synchronize(self.device)
        return out

    def host(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of ``x`` on the CPU."""
        from vitcompress.export.onnx_export import logits_of

        return logits_of(self(x)).cpu()


def _engines(model: nn.Module, runtimes: tuple[str, ...], paths: dict[str, Path], threads, opt_level) -> dict:
    from vitcompress.export.onnx_export import _float_copy

    engines: dict[str, Callable] = {"torch-fp32": TorchEngine(_float_copy(model))}
    if "ort" in runtimes:
        from vitcompress.export.runtime import OrtModule, ort_session

        engines["ort-fp32"] = OrtModule(ort_session(paths["fp32"], threads, opt_level))
        engines["ort-int8"] = OrtModule(ort_session(paths["int8"], threads, opt_level))
    if "openvino" in runtimes:
        from vitcompress.export.openvino import OvModule, has_bf16, ov_compile

        engines["openvino-fp32"] = OvModule(ov_compile(paths["fp32"], threads, "f32"))
        if has_bf16():
            engines["openvino-bf16"] = OvModule(ov_compile(paths["fp32"], threads, "bf16"))
        engines["openvino-int8"] = OvModule(ov_compile(paths["int8"], threads, "f32"))
    return engines


def _agreement(ref: torch.Tensor, got: torch.Tensor) -> dict:
    return {
        "max_abs": float((ref - got).abs().max()),
        "logit_range": float(ref.max() - ref.min()),
        "top1_agree": float((ref.argmax(1) == got.argmax(1)).float().mean()),
    }


def speedup_tables(timings: list[Timing]) -> dict:
    """Median milliseconds and the speed-up ratios of :func:`benchmark_deploy` (batch keys are strings).

    Returns:
        ``medians_ms`` (runtime -> batch -> precision -> ms; ``torch`` holds eager FP32), ``speedup``
        (runtime -> batch -> its INT8 over its FP32), ``speedup_vs_best_fp32`` (batch -> the fastest
        INT8 over the fastest f32 run of any engine) and ``speedup_vs_bf16`` (batch -> the fastest
        INT8 over OpenVINO's bf16 run; empty without one).
    """
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for t in timings:
        runtime, precision = t.engine.rsplit("-", 1)
        medians.setdefault(runtime, {}).setdefault(str(t.batch), {})[precision] = 1e3 * t.median_s
    speedup: dict[str, dict[str, float]] = {}
    best_fp32: dict[str, float] = {}
    best_int8: dict[str, float] = {}
    bf16: dict[str, float] = {}
    for runtime, by_batch in medians.items():
        for b, ms in by_batch.items():
            if "fp32" in ms:
                best_fp32[b] = min(best_fp32.get(b, float("inf")), ms["fp32"])
            if "int8" in ms:
                best_int8[b] = min(best_int8.get(b, float("inf")), ms["int8"])
                if "fp32" in ms:
                    speedup.setdefault(runtime, {})[b] = ms["fp32"] / ms["int8"]
            if "bf16" in ms:
                bf16[b] = ms["bf16"]
    return {
        "medians_ms": medians,
        "speedup": speedup,
        "speedup_vs_best_fp32": {b: best_fp32[b] / best_int8[b] for b in best_int8 if b in best_fp32},
        "speedup_vs_bf16": {b: bf16[b] / best_int8[b] for b in best_int8 if b in bf16},
    }


def _speedups(timings: list[Timing]) -> dict[str, float]:
    """The flat ratios of earlier versions (``int8_vs_ort_fp32_b8`` …), kept for old readers."""
    by = {(t.engine, t.batch): t for t in timings}
    out = {}
    for (engine, batch), t in by.items():
        if engine == "ort-int8" and ("ort-fp32", batch) in by:
            out[f"int8_vs_ort_fp32_b{batch}"] = by[("ort-fp32", batch)].median_s / t.median_s
        if engine == "ort-int8" and ("torch-fp32", batch) in by:
            out[f"int8_vs_torch_fp32_b{batch}"] = by[("torch-fp32", batch)].median_s / t.median_s
        if engine == "ort-fp32" and ("torch-fp32", batch) in by:
            out[f"ort_fp32_vs_torch_fp32_b{batch}"] = by[("torch-fp32", batch)].median_s / t.median_s
    return out


def _graphs(runtimes: tuple[str, ...], paths: dict[str, Path], threads, opt_level) -> dict:
    """ORT's optimized graphs (kernel counts) and OpenVINO's runtime models (node precisions)."""
    out: dict = {}
    if "ort" in runtimes:
        from vitcompress.export.runtime import kernel_counts

        kernels = kernel_counts(paths["int8"], threads, opt_level)
        out["kernels"] = {k: v for k, v in kernels.items() if k != "ops"}
        out["int8_ops"] = kernels["ops"]
        out["fp32_ops"] = kernel_counts(paths["fp32"], threads, opt_level)["ops"]
    if "openvino" in runtimes:
        from vitcompress.export.openvino import ov_node_precisions

        out["openvino_nodes"] = ov_node_precisions(paths["int8"], threads, "f32")
    return out


def benchmark_deploy(
    model: nn.Module,
    batches: tuple[int, ...] = (1, 8),
    threads: int | None = 1,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int = 3,
    opt_level: str = "all",
    policy: str = "promote",
    work_dir: str | Path | None = None,
    runtime: str = "all",
    input_size: int | tuple[int, ...] | None = None,
) -> dict:
    """Export a quantized ``model`` as FP32 and INT8 ONNX, time every engine, compare with BOPs.

    ONNX Runtime and OpenVINO run on the CPU; ``torch-fp32`` runs on the model's device (its input moved there
    before the clock starts, the device synchronised after each run).

    Args:
        model: a model quantized by :func:`vitcompress.quantize.quantize_`.
        batches: batch sizes to time.
        threads: torch, ORT and OpenVINO intra-op threads (None: each library's default).
        warmup, repeats, rounds: the timing protocol (module docstring).
        opt_level: ORT graph optimization level.
        policy: export policy for points without an 8-bit ONNX equivalent.
        work_dir: where the ONNX files go (default: a temporary folder, removed afterwards).
        runtime: ``ort``, ``openvino`` or ``all`` (every installed runtime).
        input_size: image size (one value or height, width) for a model that does not say its own.

    Returns:
        A JSON-ready dict: ``timings`` (list of :class:`Timing` dicts), the tables of
        :func:`speedup_tables` (``medians_ms``, ``speedup``, ``speedup_vs_best_fp32``,
        ``speedup_vs_bf16``), ``speedups`` (flat ORT ratios), ``bops_ratio`` (FP32/quantized BOPs),
        ``rel_bops``, ``kernels`` (ORT's optimized INT8 graph: integer vs float kernels),
        ``openvino_nodes`` (OpenVINO's runtime model by precision), ``agreement`` (runtime -> batch ->
        INT8 vs the fake-quant model on the timing input), ``export`` (points promoted or kept float)
        and the settings.
    """
    from vitcompress.cost import cost
    from vitcompress.export.onnx_export import export_onnx, input_shape

    runtimes = resolve_runtimes(runtime)
    shape = input_shape(model, 1, input_size)[1:]  # no input size known: fail before exporting
    with contextlib.ExitStack() as stack:
        folder = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(torch_threads(threads))
        paths = {"fp32": folder / "model-fp32.onnx", "int8": folder / "model-int8.onnx"}
        export_onnx(model, paths["fp32"], precision="fp32", input_size=input_size)
        int8 = export_onnx(model, paths["int8"], precision="int8", policy=policy, input_size=input_size)
        engines = _engines(model, runtimes, paths, threads, opt_level)
        timings: list[Timing] = []
        agreement: dict[str, dict] = {}
        gen = torch.Generator().manual_seed(0)
        quantized = TorchEngine(model)  # the fake-quant model the INT8 files are compared with, on its device
        for b in tqdm(batches, desc="bench", leave=False):
            x = torch.randn(b, *shape, generator=gen)  # on the CPU: the runtimes read host memory
            timings += time_engines(engines, x, warmup, repeats, rounds)
            with torch.no_grad():
                ref = quantized.host(x)
                for rt in runtimes:
                    agreement.setdefault(rt, {})[f"b{b}"] = _agreement(ref, engines[f"{rt}-int8"](x))
        graphs = _graphs(runtimes, paths, threads, opt_level)
    c = cost(model, input_size=input_size)
    return {
        "model": type(model).__name__,
        "runtimes": list(runtimes),
        "torch_device": describe(model_device(model)),
        "threads": threads,
        "opt_level": opt_level,
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "timings": [t.to_dict() for t in timings],
        **speedup_tables(timings),
        "speedups": _speedups(timings),
        "rel_bops": c.rel_bops,
        "bops_ratio": 1.0 / c.rel_bops,
        "macs": c.macs,
        **graphs,
        "agreement": agreement,
        "export": {
            "points": len(int8.points),
            "changed": [p.to_dict() for p in int8.changed_points],
            "float_modules": [dict(m) for m in int8.float_modules],
        },
    }


def format_bench(result: dict) -> str:
    """A plain-text table of :func:`benchmark_deploy`'s result."""
    lines = [
        f"{result['model']}: threads={result['threads']}, torch on "
        f"{result.get('torch_device', {}).get('device', 'cpu')}, runtimes {', '.join(result['runtimes'])}, "
        f"ORT opt level {result['opt_level']}, {result['repeats']} runs after {result['warmup']} warm-up "
        "(ms per batch)",
        f"{'engine':<14} {'batch':>5} {'min':>8} {'median':>8} {'p90':>8} {'max':>8} {'img/s':>8}",
    ]
    for t in result["timings"]:
        lines.append(
            f"{t['engine']:<14} {t['batch']:>5} {t['min_s'] * 1e3:>8.2f} {t['median_s'] * 1e3:>8.2f} "
            f"{t['p90_s'] * 1e3:>8.2f} {t['max_s'] * 1e3:>8.2f} {t['throughput']:>8.1f}"
        )
    for runtime, by_batch in result["speedup"].items():
        lines.append(f"{runtime} INT8 over {runtime} FP32 (median): " + _ratios(by_batch))
    lines.append("fastest INT8 over the fastest f32 run: " + _ratios(result["speedup_vs_best_fp32"]))
    if result["speedup_vs_bf16"]:
        lines.append("fastest INT8 over OpenVINO bf16: " + _ratios(result["speedup_vs_bf16"]))
    lines.append(f"predicted by BOPs (FP32/INT8): {result['bops_ratio']:.1f}x (rel. BOPs {result['rel_bops']:.4f})")
    if "kernels" in result:
        k = result["kernels"]
        lines.append(
            f"ORT INT8 graph: {k['integer']} integer kernels, {k['float_compute']} float matmul/conv "
            f"{k['float_compute_ops']}, {k['convert']} quantize/dequantize nodes"
        )
    if "openvino_nodes" in result:
        n = result["openvino_nodes"]
        lines.append(
            f"OpenVINO INT8 runtime model: {n['integer']} integer matmul/conv nodes, {n['float_compute']} float "
            f"{n['float_compute_ops']}"
        )
    floats = result.get("export", {}).get("float_modules", [])
    if floats:
        names = ", ".join(m["name"] or "<model>" for m in floats[:4]) + (" …" if len(floats) > 4 else "")
        lines.append(f"{len(floats)} modules exported in float: {names}")
    for runtime, by_batch in result["agreement"].items():
        for b, a in by_batch.items():
            lines.append(
                f"INT8 {runtime} vs fake-quant ({b}): max |diff| {a['max_abs']:.4f} (logit range "
                f"{a['logit_range']:.2f}), top-1 agreement {100 * a['top1_agree']:.1f} %"
            )
    return "\n".join(lines)


def _ratios(by_batch: dict[str, float]) -> str:
    return ", ".join(f"batch {b} {v:.2f}x" for b, v in by_batch.items())
