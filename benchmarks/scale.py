"""The scale benchmark: every method stage on random-weight timm models at 224 px (issue #15).

For each model and stage it records ``seconds``, ``peak_rss_mb`` (and the peak GPU memory on CUDA) and
``ratio``: the stage's time over the float forwards it cannot avoid, timed in the same process (PTQ: one
float pass over the same images; Evol-Q: the block forwards its fitness needs; F-LBQ: the partial
forwards; MixA-Q: a forward per candidate; GPUSQ: the forwards of the images its steps train on; ONNX
export: the forward of the traced batch). Weights do not change the time, so the models are random.

Every (model, stage) runs in a subprocess of its own, so its peak RSS is its own. The method stages come
from ``benchmarks/scale_methods.py``; PTQ, GPUSQ, ONNX export and the float pass are here.

    nice -n 10 python benchmarks/scale.py --models deit_small_patch16_224 swin_tiny_patch4_window7_224 \\
        --quick --out docs/results/scale_quick.json
    python benchmarks/scale.py --chart docs/results/scale_quick.json --png docs/results/scale.png

``--quick``: 8 images, GPUSQ 3 steps of 4 images (projected to 100), the methods' own quick settings.
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import vitcompress.quantize as quantize_module  # noqa: E402
from vitcompress.config import get_preset  # noqa: E402
from vitcompress.device import describe, model_device, resolve_device, synchronize  # noqa: E402
from vitcompress.nn.convert import point_role, quantization_points  # noqa: E402
from vitcompress.quantize import quantize_  # noqa: E402

MODELS = ("deit_tiny_patch16_224", "deit_small_patch16_224", "deit_base_patch16_224", "swin_tiny_patch4_window7_224")
GPUSQ_STEPS = 100  # per stage, as issue #15 asks; --quick measures a few and projects


def _rss_mb() -> float:
    """Resident set size now (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    out, wall, _ = _timed_cpu(fn, device)
    return out, wall


def _timed_cpu(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float, float]:
    """``fn()``, its wall seconds and the process's CPU seconds (with one thread, the steadier measure of its
    own work on a shared machine)."""
    synchronize(device)
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0, time.process_time() - c0


def _batches(images: torch.Tensor, device: torch.device, batch: int) -> list[torch.Tensor]:
    """The images as batches on ``device``, built before any timing."""
    return [x.to(device) for x in images.split(batch)]


@torch.no_grad()
def _float_seconds(model: nn.Module, batches: list[torch.Tensor], cpu: bool = False) -> float | tuple[float, float]:
    """One float forward over ``batches`` (the model's own, fused attention): wall seconds, and CPU seconds
    with ``cpu``."""
    model.eval()

    def run() -> None:
        for x in batches:
            model(x)

    _, wall, cpu_seconds = _timed_cpu(run, model_device(model))
    return (wall, cpu_seconds) if cpu else wall


# ---- the stages of this file -------------------------------------------------------------------------
def float_pass(model: nn.Module, images: torch.Tensor, quick: bool, batch: int = 8) -> dict[str, Any]:
    """One float forward over the images: the unit every ratio divides by (and the inference memory peak)."""
    seconds, cpu = _float_seconds(model, _batches(images, model_device(model), batch), cpu=True)
    return {"seconds": seconds, "float_seconds": seconds, "ratio": 1.0, "cpu_seconds": cpu, "notes": f"batch {batch}"}


def ptq(model: nn.Module, images: torch.Tensor, quick: bool, preset: str = "w8a8", batch: int = 8) -> dict[str, Any]:
    """``quantize_`` with ``preset`` (in place: the process holds one model, as the float stage does) over the
    images against one float pass over them, with its parts: ``prepare`` (the traced forward), weight ranges,
    the activation pass (with the activation ranges), and the activation ranges alone (``compute_qparams``
    re-run on the kept statistics)."""
    device = model_device(model)
    batches = _batches(images, device, batch)
    float_seconds, float_cpu = _float_seconds(model, batches, cpu=True)
    recipe = get_preset(preset)
    parts: dict[str, float] = {}
    with _timing_parts(parts, device):
        _, seconds, cpu = _timed_cpu(lambda: quantize_(model, recipe, batches, batch_size=batch), device)
    acts = [qz for n, qz in quantization_points(model) if point_role(n, qz) != "weight" and qz.spec.enabled]
    _, parts["activation_ranges"] = _timed(lambda: [qz.compute_qparams() for qz in acts], device)
    return {
        "seconds": seconds,
        "float_seconds": float_seconds,
        "ratio": seconds / float_seconds,
        "cpu_seconds": cpu,
        "float_cpu_seconds": float_cpu,
        "ratio_cpu": cpu / float_cpu,
        "parts": parts,
        "notes": f"{preset}, batch {batch}; float = one float pass (the model's fused attention) over the same images",
    }


@contextmanager
def _timing_parts(parts: dict[str, float], device: torch.device) -> Iterator[None]:
    """Time the steps ``quantize_`` calls (its module's names wrapped for the duration)."""
    names = {"prepare": "prepare", "_calibrate_weights": "weights", "calibrate_activations": "activation_pass"}
    saved = {n: getattr(quantize_module, n) for n in names}

    def wrap(fn, key):
        def timed(*args, **kwargs):
            out, parts[key] = _timed(lambda: fn(*args, **kwargs), device)
            return out

        return timed

    for n, key in names.items():
        setattr(quantize_module, n, wrap(saved[n], key))
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(quantize_module, n, fn)


def gpusq_steps(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    """GPUSQ-ViT stage-1 training steps (2:4 sparse student, dense teacher, distillation), projected to
    ``GPUSQ_STEPS`` steps of each of its two stages at the measured time per step."""
    from vitcompress.methods.gpusq import gpusq_preset
    from vitcompress.methods.gpusq.algorithm import sparse_distill_

    device = model_device(model)
    steps, batch = (3, 4) if quick else (GPUSQ_STEPS, 8)
    labels = torch.randint(0, model.num_classes, (len(images),), generator=torch.Generator().manual_seed(0))
    train_set = torch.utils.data.TensorDataset(images, labels)
    config = gpusq_preset("gpusq-int8", steps=steps, batch_size=batch)
    float_seconds = _float_seconds(model, _batches(images[:batch], device, batch)) * steps
    student = copy.deepcopy(model)
    _, seconds = _timed(lambda: sparse_distill_(student, train_set, config), device)
    per_step = seconds / steps
    return {
        "seconds": seconds,
        "float_seconds": float_seconds,
        "ratio": seconds / float_seconds,
        "steps": steps,
        "batch": batch,
        "projected_seconds": per_step * 2 * GPUSQ_STEPS,
        "notes": f"stage 1, {steps} steps of {batch} images (forward + backward of the student, forward of the "
        f"teacher); float = a float forward of the same images; projected = {GPUSQ_STEPS} steps of both stages",
    }


def onnx_export(model: nn.Module, images: torch.Tensor, quick: bool) -> dict[str, Any]:
    """ONNX QDQ export of the ``w8a8`` model (calibrated on 2 images, not timed)."""
    from vitcompress.export.onnx_export import export_onnx

    device = model_device(model)
    q = copy.deepcopy(model)
    quantize_(q, get_preset("w8a8"), _batches(images[:2], device, 2))
    float_seconds = _float_seconds(model, _batches(images[:2], device, 2))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        report, seconds = _timed(lambda: export_onnx(q, path), device)
        size = path.stat().st_size
    return {
        "seconds": seconds,
        "float_seconds": float_seconds,
        "ratio": seconds / float_seconds,
        "onnx_mb": size / 2**20,
        "notes": f"INT8 QDQ, opset {report.opset}, traced at batch 2 on a CPU copy; "
        "float = one float forward of 2 images",
    }


def _method_stages() -> dict[str, Callable[..., dict[str, Any]]]:
    """The method stages of ``benchmarks/scale_methods.py``, by the names used here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import scale_methods

    names = {
        "evolq-one-pass": "evolq_one_pass",
        "evolq-projected": "evolq_projected_default",
        "flbq-layer": "flbq_curves_layer",
        "flbq-group": "flbq_curves_group",
        "mixaq-candidates": "mixaq_candidates",
    }
    return {k: scale_methods.STAGES[v] for k, v in names.items() if v in scale_methods.STAGES}


OWN_STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "float": float_pass,
    "ptq-w8a8": lambda m, x, quick: ptq(m, x, quick, "w8a8"),
    "ptq-fqvit-w4a8": lambda m, x, quick: ptq(m, x, quick, "fqvit-w4a8"),
}
LATE_STAGES: dict[str, Callable[..., dict[str, Any]]] = {"gpusq-100": gpusq_steps, "onnx-export": onnx_export}
METHOD_STAGES = ("evolq-one-pass", "evolq-projected", "flbq-layer", "flbq-group", "mixaq-candidates")
STAGES = (*OWN_STAGES, *METHOD_STAGES, *LATE_STAGES)


def _stage(name: str) -> Callable[..., dict[str, Any]]:
    if name in OWN_STAGES:
        return OWN_STAGES[name]
    if name in LATE_STAGES:
        return LATE_STAGES[name]
    return _method_stages()[name]


# ---- one stage in this process (the worker) -----------------------------------------------------------
def run_stage(model_name: str, stage: str, images: int, quick: bool, device: str) -> dict[str, Any]:
    """Build the model and the images, run ``stage``, and add memory, MACs and the machine load."""
    import timm

    from vitcompress.cost import cost

    dev = resolve_device(device)
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False).eval()
    macs = cost(model).macs  # per image, on the float model (one probe forward, not timed)
    model = model.to(dev)
    x = torch.randn(images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    base_rss = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    load = os.getloadavg()
    row = _stage(stage)(model, x, quick)
    row.update(
        model=model_name,
        stage=stage,
        images=images,
        macs_per_image=macs,
        base_rss_mb=base_rss,
        peak_rss_mb=_peak_rss_mb(),
        device=describe(dev),
        threads=torch.get_num_threads(),
        load=[load, os.getloadavg()],
    )
    if dev.type == "cuda":
        row["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    return row


def _subprocess(model: str, stage: str, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", model, stage, "--images", str(a.images), "--device", a.device]
    cmd += ["--threads", str(a.threads)] + (["--quick"] if a.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": model, "stage": stage, "error": tail[0]}
    return json.loads(lines[-1])


def run(a: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for model in a.models:
        for stage in a.stages:
            if stage == "mixaq-candidates" and "swin" not in model:
                continue
            try:
                row = _subprocess(model, stage, a)
            except subprocess.TimeoutExpired:
                row = {"model": model, "stage": stage, "error": f"over {a.timeout} s"}
            rows.append(row)
            shown = {
                k: row.get(k) for k in ("seconds", "ratio", "ratio_cpu", "peak_rss_mb", "projected_seconds", "error")
            }
            print(model, stage, json.dumps({k: v for k, v in shown.items() if v is not None}), flush=True)
            if a.out is not None:  # written after every stage: a long run keeps what it measured
                _write(a, rows)
    return _write(a, rows)


def _write(a: argparse.Namespace, rows: list[dict]) -> dict[str, Any]:
    out = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
        "quick": a.quick,
        "images": a.images,
        "threads": a.threads,
        "rows": rows,
    }
    if a.out is not None:
        a.out.write_text(json.dumps(out, indent=1) + "\n")
    return out


# ---- chart -----------------------------------------------------------------------------------------------
def _points(rows: list[dict], stage: str) -> list[tuple[float, float]]:
    """(MACs × images, seconds) of a stage: CPU seconds where every row has them (one thread: the steadier
    measure on a shared machine), else wall seconds."""
    mine = [r for r in rows if r["stage"] == stage and "seconds" in r]
    key = "cpu_seconds" if all(r.get("cpu_seconds") for r in mine) else "seconds"
    return sorted((r["macs_per_image"] * r["images"], r[key]) for r in mine)


def slopes(rows: list[dict]) -> dict[str, float]:
    """Per stage, the least-squares slope of log(seconds) against log(MACs × images) (sizes 2× apart or more)."""
    import numpy as np

    out = {}
    for stage in sorted({r["stage"] for r in rows if "seconds" in r}):
        pts = _points(rows, stage)
        if pts[-1][0] >= 2 * pts[0][0]:  # a slope needs sizes at least a factor 2 apart
            x, y = np.log10([p[0] for p in pts]), np.log10([p[1] for p in pts])
            out[stage] = float(np.polyfit(x, y, 1)[0])
    return out


def chart(paths: list[Path], png: Path, stages: list[str] | None = None) -> dict[str, float]:
    """Log-log chart of seconds against MACs × images, one series per stage; returns the slopes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"] if "seconds" in r]
    rows = [r for r in rows if (stages is None or r["stage"] in stages) and "projected" not in r["stage"]]
    fitted = slopes(rows)
    fig, ax = plt.subplots(figsize=(7, 5))
    for stage in sorted({r["stage"] for r in rows}):
        pts = _points(rows, stage)
        label = f"{stage} (slope {fitted[stage]:.2f})" if stage in fitted else stage
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.set_xlabel("MACs × images")
    ax.set_ylabel("seconds (CPU seconds for the float and PTQ stages)")
    ax.set_title("time against work (random-weight timm models, 224 px)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    return fitted


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=list(STAGES))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--images", type=int, default=None, help="images per stage (default: 8 with --quick, else 64)")
    p.add_argument("--device", default="cpu", help="auto|cpu|cuda|cuda:N")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per stage")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "STAGE"), help=argparse.SUPPRESS)
    p.add_argument("--chart", nargs="+", type=Path, default=None, help="JSON files to chart (no run)")
    p.add_argument("--png", type=Path, default=Path("docs/results/scale.png"))
    a = p.parse_args(argv)
    a.images = a.images or (8 if a.quick else 64)
    torch.set_num_threads(a.threads)
    if a.chart:
        print(json.dumps(chart(a.chart, a.png), indent=1))
    elif a.worker:
        print(json.dumps(run_stage(*a.worker, a.images, a.quick, a.device)), flush=True)
    else:
        run(a)


if __name__ == "__main__":
    main()
