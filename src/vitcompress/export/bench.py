"""Latency and throughput of torch eager FP32, ORT FP32 and ORT INT8, next to the predicted cost.

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

from vitcompress.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("torch-fp32", "ort-fp32", "ort-int8")


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


def _speedups(timings: list[Timing]) -> dict[str, float]:
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
) -> dict:
    """Export a quantized ``model`` as FP32 and INT8 ONNX, time the three engines, compare with BOPs.

    Args:
        model: a model quantized by :func:`vitcompress.quantize.quantize_`.
        batches: batch sizes to time.
        threads: torch and ORT intra-op threads (None: each library's default).
        warmup, repeats, rounds: the timing protocol (module docstring).
        opt_level: ORT graph optimization level.
        policy: export policy for points without an 8-bit ONNX equivalent.
        work_dir: where the ONNX files go (default: a temporary folder, removed afterwards).

    Returns:
        A JSON-ready dict: ``timings`` (list of :class:`Timing` dicts), ``speedups`` (median ratios),
        ``bops_ratio`` (FP32/quantized BOPs), ``rel_bops``, ``kernels`` (ORT's optimized INT8 graph:
        integer vs float kernels), ``agreement`` (INT8 ORT vs the fake-quant model on the timing input),
        ``export`` (points promoted or kept float) and the settings.
    """
    from vitcompress.cost import cost
    from vitcompress.export.onnx_export import _float_copy, _input_shape, export_onnx
    from vitcompress.export.runtime import OrtModule, kernel_counts, ort_session

    with contextlib.ExitStack() as stack:
        folder = Path(work_dir) if work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(torch_threads(threads))
        fp32_path, int8_path = folder / "model-fp32.onnx", folder / "model-int8.onnx"
        export_onnx(model, fp32_path, precision="fp32")
        int8 = export_onnx(model, int8_path, precision="int8", policy=policy)
        float_model = _float_copy(model).eval()
        engines = {
            "torch-fp32": float_model,
            "ort-fp32": OrtModule(ort_session(fp32_path, threads, opt_level)),
            "ort-int8": OrtModule(ort_session(int8_path, threads, opt_level)),
        }
        timings: list[Timing] = []
        agreement = {}
        gen = torch.Generator().manual_seed(0)
        for b in batches:
            x = torch.randn(_input_shape(model, b), generator=gen)
            timings += time_engines(engines, x, warmup, repeats, rounds)
            with torch.no_grad():
                ref, got = model(x), engines["ort-int8"](x)
            agreement[f"b{b}"] = {
                "max_abs": float((ref - got).abs().max()),
                "logit_range": float(ref.max() - ref.min()),
                "top1_agree": float((ref.argmax(1) == got.argmax(1)).float().mean()),
            }
        kernels = kernel_counts(int8_path, threads, opt_level)
        fp32_kernels = kernel_counts(fp32_path, threads, opt_level)
    c = cost(model)
    return {
        "model": type(model).__name__,
        "threads": threads,
        "opt_level": opt_level,
        "warmup": warmup,
        "repeats": repeats,
        "rounds": rounds,
        "timings": [t.to_dict() for t in timings],
        "speedups": _speedups(timings),
        "rel_bops": c.rel_bops,
        "bops_ratio": 1.0 / c.rel_bops,
        "macs": c.macs,
        "kernels": {k: v for k, v in kernels.items() if k != "ops"},
        "int8_ops": kernels["ops"],
        "fp32_ops": fp32_kernels["ops"],
        "agreement": agreement,
        "export": {"points": len(int8.points), "changed": [p.to_dict() for p in int8.changed_points]},
    }


def format_bench(result: dict) -> str:
    """A plain-text table of :func:`benchmark_deploy`'s result."""
    lines = [
        f"{result['model']}: threads={result['threads']}, ORT opt level {result['opt_level']}, "
        f"{result['repeats']} runs after {result['warmup']} warm-up (ms per batch)",
        f"{'engine':<11} {'batch':>5} {'min':>8} {'median':>8} {'p90':>8} {'max':>8} {'img/s':>8}",
    ]
    for t in result["timings"]:
        lines.append(
            f"{t['engine']:<11} {t['batch']:>5} {t['min_s'] * 1e3:>8.2f} {t['median_s'] * 1e3:>8.2f} "
            f"{t['p90_s'] * 1e3:>8.2f} {t['max_s'] * 1e3:>8.2f} {t['throughput']:>8.1f}"
        )
    sp = ", ".join(f"{k} {v:.2f}x" for k, v in result["speedups"].items())
    k = result["kernels"]
    lines.append(f"measured speed-up (median): {sp}")
    lines.append(f"predicted by BOPs (FP32/INT8): {result['bops_ratio']:.1f}x (rel. BOPs {result['rel_bops']:.4f})")
    lines.append(
        f"ORT INT8 graph: {k['integer']} integer kernels, {k['float_compute']} float matmul/conv "
        f"{k['float_compute_ops']}, {k['convert']} quantize/dequantize nodes"
    )
    for b, a in result["agreement"].items():
        lines.append(
            f"INT8 ORT vs fake-quant ({b}): max |diff| {a['max_abs']:.4f} (logit range "
            f"{a['logit_range']:.2f}), top-1 agreement {100 * a['top1_agree']:.1f} %"
        )
    return "\n".join(lines)
