"""The GPU check of issue #15: every command on ``--device cuda``, CPU-vs-GPU agreement of PTQ, GPU timings at
224 px, and 2:4 sparse kernels against dense. One script, one JSON file, for a session that is lent a GPU.

Parts (each recorded as it finishes; a part that fails is recorded with its error and the script goes on):

1. ``commands``: ``vitcompress <command> --device DEVICE`` run in this process on ``vit-fmnist`` (and
   ``swin-fmnist`` for eval, PTQ and MixA-Q): eval, cost, inspect, export, bench, demo, compress
   ptq/evolq/flbq/gpusq/mixaq with short settings. ``zoo train`` is not run (hours); its trainer runs in GPUSQ.
2. ``agreement``: the same W8A8 PTQ (256 calibration images) of each zoo model on the CPU and on DEVICE, then
   the logits of 2,000 test images. Passes when top-1 differs by at most 0.3 pt and the mean per-image cosine
   of the logits is at least 0.999 (float rounding differs between the two devices' kernels; a quantizer
   whose scale lands one rounding step apart flips a few codes, not the prediction).
3. ``sparse24``: ``torch.sparse.to_sparse_semi_structured`` fp16 linear layers of DeiT-S/B's MLP shapes against
   dense ``F.linear`` (median of CUDA-event timings, and the largest difference); CUDA only.
4. ``timings`` on random-weight ``deit_small_patch16_224`` and ``swin_tiny_patch4_window7_224`` at 224 px:
   a float forward, PTQ ``w8a8`` and ``fqvit-w4a8``, Evol-Q one pass, F-LBQ curves (layer units), MixA-Q
   candidates (Swin), GPUSQ 100 optimizer steps (50 sparse distillation + 50 QAT). Seconds, and the peak GPU
   memory on CUDA (the process's peak RSS on the CPU).

Run on a GPU (not yet run on one; estimated at under 6 minutes on an H200, and ``--budget-s`` skips the parts
left once it is spent)::

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json

Its plumbing runs on the CPU too (how the tests run it; 425 s on 2 shared cores at load 5)::

    nice -n 10 python benchmarks/gpu_check.py --device cpu --quick --threads 1 --out /tmp/gpu_check.json
"""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vitcompress.device import describe, model_device, resolve_device, synchronize  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scale_methods.py beside this file

TOP1_TOLERANCE_PT = 0.3
COSINE_FLOOR = 0.999
TIMING_MODELS = ("deit_small_patch16_224", "swin_tiny_patch4_window7_224")


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the full check on a GPU, or ``--quick`` (the plumbing, on a CPU)."""

    eval_images: int
    calib_images: int
    timing_images: int
    gpusq_steps: int
    gpusq_batch: int
    train_steps: int

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(64, 32, 4, 1, 2, 2) if quick else cls(2000, 256, 64, 50, 16, 20)


class Budget:
    """Wall-clock budget: parts that would start after it is spent are skipped (recorded as such)."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> bool:
        return time.perf_counter() < self.end


def _peak_memory(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(name: str, fn: Callable[[], dict[str, Any]], device: torch.device, budget: Budget) -> dict[str, Any]:
    """``fn()``'s dict with ``seconds`` and peak memory, or ``error`` (its last line) / ``skipped``."""
    if not budget.left():
        return {"skipped": "time budget spent"}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0 = time.perf_counter()
    try:
        row = fn() or {}
    except Exception as e:  # noqa: BLE001 - a failed part is a result, not the end of the check
        tb = traceback.format_exc().strip().splitlines()
        print(f"  {name}: FAILED {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "where": tb[-3:]}
    synchronize(device)
    row = {"seconds": time.perf_counter() - t0, **_peak_memory(device), **row}
    print(f"  {name}: {row['seconds']:.1f} s", file=sys.stderr, flush=True)
    return row


# ---- 1. every command on the device --------------------------------------------------------------------------
def command_lines(work: Path, sizes: Sizes) -> dict[str, list[str]]:
    """name -> argv (without ``--device``, and for ``compress`` without :func:`job_options`), short settings."""
    n, c = str(min(500, sizes.eval_images)), str(sizes.calib_images)
    steps = str(sizes.train_steps)
    return {
        "eval vit": ["eval", "--model", "vit-fmnist", "--limit", str(sizes.eval_images)],
        "eval swin": ["eval", "--model", "swin-fmnist", "--limit", str(sizes.eval_images)],
        "cost": ["cost", "--model", "vit-fmnist", "--recipe", "w8a8"],
        "inspect": ["inspect", "--model", "swin-fmnist"],
        "export": ["export", "--model", "vit-fmnist", "--recipe", "w8a8", "--calib-size", c, "--out", f"{work}/m.onnx"],
        "bench": ["bench", "--model", "vit-fmnist", "--calib-size", c, "--runtime", "ort", "--batch", "1", "8"]
        + ["--warmup", "1", "--repeats", "3", "--rounds", "1"],
        "demo": ["demo", "--presets", "w8a8", "--limit", n, "--calib-size", c],
        "compress ptq vit": ["compress", "ptq", "--model", "vit-fmnist", "--recipe", "w8a8", "--out", f"{work}/ptq"],
        "compress ptq swin": ["compress", "ptq", "--model", "swin-fmnist", "--recipe", "fqvit-w4a8"]
        + ["--out", f"{work}/ptq-swin"],
        "compress evolq": ["compress", "evolq", "--model", "vit-fmnist", "--recipe", "w4a8", "--passes", "1"]
        + ["--out", f"{work}/evolq"],
        "compress flbq": ["compress", "flbq", "--model", "vit-fmnist", "--budget", "4", "--n-images", "16"]
        + ["--out", f"{work}/flbq"],
        "compress gpusq": ["compress", "gpusq", "--model", "vit-fmnist", "--steps", steps, "--qat-steps", steps]
        + ["--out", f"{work}/gpusq"],
        "compress mixaq": ["compress", "mixaq", "--model", "swin-fmnist", "--eval-images", "64", "--population", "4"]
        + ["--generations", "1", "--out", f"{work}/mixaq"],
    }


def _command(argv: list[str], device: str) -> dict[str, Any]:
    from vitcompress.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([*argv, "--device", device, "--no-progress"])
    row: dict[str, Any] = {"rc": rc, "stdout_tail": out.getvalue().strip().splitlines()[-1:]}
    metrics = _metrics_file(argv)
    if metrics is not None:
        m = json.loads(metrics.read_text())
        row.update({k: m.get(k) for k in ("device", "fp_top1", "q_top1", "seconds")})
    if rc != 0:
        raise RuntimeError(f"exit status {rc}: {err.getvalue().strip().splitlines()[-1:]}")
    return row


def _metrics_file(argv: list[str]) -> Path | None:
    if argv[0] != "compress" or "--out" not in argv:
        return None
    path = Path(argv[argv.index("--out") + 1]) / "metrics.json"
    return path if path.is_file() else None


def job_options(sizes: Sizes) -> list[str]:
    """The options every ``compress`` line adds: test images, calibration images, a fresh folder."""
    return ["--limit", str(min(500, sizes.eval_images)), "--calib-size", str(sizes.calib_images), "--overwrite"]


def commands(device: torch.device, sizes: Sizes, budget: Budget, work: Path) -> dict[str, Any]:
    job = job_options(sizes)
    rows = {}
    for name, argv in command_lines(work, sizes).items():
        argv = argv + job if argv[0] == "compress" else argv
        rows[name] = _run(name, lambda a=argv: _command(a, str(device)), device, budget)
    return rows


# ---- 2. CPU vs device agreement of PTQ -----------------------------------------------------------------------
@torch.no_grad()
def _logits(model: nn.Module, data, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    from vitcompress.data.datasets import make_loader
    from vitcompress.device import to_device

    device, out, labels = model_device(model), [], []
    for x, y in make_loader(data, batch_size):
        out.append(model(to_device(x, device)).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def agreement(name: str, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """W8A8 PTQ of zoo model ``name`` on the CPU and on ``device`` from the same images; their logits compared."""
    from torch.utils.data import Subset

    from vitcompress.config import get_preset
    from vitcompress.data.datasets import calibration_subset
    from vitcompress.data.source import DataSource
    from vitcompress.models.source import ModelSource
    from vitcompress.quantize import quantize_

    models = {"cpu": ModelSource(name).load("cpu"), "device": ModelSource(name).load(device)}
    data = DataSource()
    calib = calibration_subset(data.train_set(models["cpu"], None), sizes.calib_images, seed=0)
    test = data.eval_set(models["cpu"], None)
    test = Subset(test, range(min(sizes.eval_images, len(test))))
    logits = {}
    for where, model in models.items():
        quantize_(model, get_preset("w8a8"), calib)
        logits[where], labels = _logits(model, test)
    cos = F.cosine_similarity(logits["cpu"].double(), logits["device"].double(), dim=1)
    top1 = {k: 100.0 * float((v.argmax(1) == labels).double().mean()) for k, v in logits.items()}
    diff = abs(top1["cpu"] - top1["device"])
    return {
        "images": len(labels),
        "top1_cpu": top1["cpu"],
        "top1_device": top1["device"],
        "top1_diff_pt": diff,
        "prediction_agreement": float((logits["cpu"].argmax(1) == logits["device"].argmax(1)).double().mean()),
        "cosine_mean": float(cos.mean()),
        "cosine_min": float(cos.min()),
        "max_abs_diff": float((logits["cpu"] - logits["device"]).abs().max()),
        "passed": diff <= TOP1_TOLERANCE_PT and float(cos.mean()) >= COSINE_FLOOR,
        "tolerance": f"top-1 within {TOP1_TOLERANCE_PT} pt, mean logits cosine >= {COSINE_FLOOR}",
    }


# ---- 3. timings at 224 px -------------------------------------------------------------------------------------
def _float_forward(model: nn.Module, images: torch.Tensor) -> dict[str, Any]:
    with torch.no_grad():
        for x in images.split(32):
            model(x.to(model_device(model)))
    return {"images": len(images)}


def _ptq(model: nn.Module, images: torch.Tensor, preset: str) -> dict[str, Any]:
    from vitcompress.config import get_preset
    from vitcompress.quantize import quantize_

    q = copy.deepcopy(model)
    quantize_(q, get_preset(preset), list(images.split(32)))  # host batches: moving them is part of the work
    return {"images": len(images)}


def _gpusq(model: nn.Module, images: torch.Tensor, sizes: Sizes) -> dict[str, Any]:
    from torch.utils.data import TensorDataset

    from vitcompress.methods.gpusq import gpusq_, gpusq_preset
    from vitcompress.train.trainer import TrainConfig

    n = sizes.gpusq_steps
    steps = TrainConfig(steps=n, batch_size=sizes.gpusq_batch, lr=5e-4, log_every=max(1, n // 5))
    config = replace(gpusq_preset("gpusq-int8"), prune=steps, qat=replace(steps, lr=1e-4), factor_images=len(images))
    labels = torch.randint(0, 1000, (len(images),), generator=torch.Generator().manual_seed(0))
    data = TensorDataset(images, labels)
    info = gpusq_(copy.deepcopy(model).train(), data, data, config)
    return {
        "steps": 2 * n,
        "batch_size": sizes.gpusq_batch,
        "prune_seconds": info["prune"]["seconds"],
        "qat_seconds": info["qat"]["seconds"],
    }


def _method_stage(stage: str) -> Callable[..., dict[str, Any]]:
    import scale_methods  # noqa: PLC0415 - H2's stage functions, beside this file

    return scale_methods.STAGES[stage]


def timing_stages(model_name: str, sizes: Sizes, quick: bool) -> dict[str, Callable[[nn.Module, torch.Tensor], dict]]:
    stages: dict[str, Callable[[nn.Module, torch.Tensor], dict]] = {
        "float_forward": _float_forward,
        "ptq_w8a8": lambda m, x: _ptq(m, x, "w8a8"),
        "ptq_fqvit_w4a8": lambda m, x: _ptq(m, x, "fqvit-w4a8"),
        "evolq_one_pass": lambda m, x: _method_stage("evolq_one_pass")(m, x, quick),
        "flbq_curves_layer": lambda m, x: _method_stage("flbq_curves_layer")(m, x, quick),
        "gpusq_100_steps": lambda m, x: _gpusq(m, x, sizes),
    }
    if "swin" in model_name:
        stages["mixaq_candidates"] = lambda m, x: _method_stage("mixaq_candidates")(m, x, quick)
    return stages


def timings(device: torch.device, sizes: Sizes, budget: Budget, quick: bool) -> dict[str, Any]:
    import timm

    out: dict[str, Any] = {}
    for name in TIMING_MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval().to(device)
        images = torch.randn(sizes.timing_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        rows: dict[str, Any] = {"images": sizes.timing_images}
        for stage, fn in timing_stages(name, sizes, quick).items():
            rows[stage] = _run(f"{name} {stage}", lambda f=fn, m=model, x=images: f(m, x), device, budget)
        out[name] = rows
    return out


# ---- 4. 2:4 sparse kernels ------------------------------------------------------------------------------------
SPARSE_SHAPES = {  # (tokens, in, out): batch 64 x 197 tokens through the MLP of DeiT-S and DeiT-B
    "deit_s_fc1": (64 * 197, 384, 1536),
    "deit_s_fc2": (64 * 197, 1536, 384),
    "deit_b_fc1": (64 * 197, 768, 3072),
    "deit_b_fc2": (64 * 197, 3072, 768),
}


def _median_ms(fn: Callable[[], Any], repeats: int = 30) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` with the 2 largest magnitudes of every 4 consecutive inputs kept (the 2:4 pattern)."""
    groups = weight.view(weight.shape[0], -1, 4)  # (out, in/4, 4)
    keep = groups.abs().topk(2, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return (groups * mask).view_as(weight)


@torch.no_grad()
def sparse24(device: torch.device) -> dict[str, Any]:
    """Dense vs 2:4 semi-structured fp16 ``F.linear`` at DeiT MLP shapes (CUDA only)."""
    if device.type != "cuda":
        return {"skipped": "2:4 semi-structured kernels need CUDA (sm80+)"}
    from torch.sparse import to_sparse_semi_structured

    g = torch.Generator(device=device).manual_seed(0)
    rows = {}
    for name, (m, k, n) in SPARSE_SHAPES.items():
        w = two_four(torch.randn(n, k, device=device, dtype=torch.float16, generator=g))
        x = torch.randn(m, k, device=device, dtype=torch.float16, generator=g)
        ws = to_sparse_semi_structured(w)
        dense = _median_ms(lambda x=x, w=w: F.linear(x, w))
        sparse = _median_ms(lambda x=x, ws=ws: F.linear(x, ws))
        diff = float((F.linear(x, w) - F.linear(x, ws)).abs().max())
        rows[name] = {"shape": [m, k, n], "dense_ms": dense, "sparse_ms": sparse, "speedup": dense / sparse}
        rows[name]["max_abs_diff"] = diff
    return rows


# ---- the script -----------------------------------------------------------------------------------------------
PARTS = ("commands", "agreement", "sparse24", "timings")


def run_parts(args: argparse.Namespace, device: torch.device, work: Path) -> dict[str, Any]:
    sizes, budget = Sizes.of(args.quick), Budget(args.budget_s)
    result: dict[str, Any] = {}
    if "commands" in args.parts:
        result["commands"] = commands(device, sizes, budget, work)
    if "agreement" in args.parts:
        result["agreement"] = {
            m: _run(f"agreement {m}", lambda m=m: agreement(m, device, sizes), device, budget)
            for m in ("vit-fmnist", "swin-fmnist")
        }
    if "sparse24" in args.parts:  # seconds on a GPU: before the timings, which the budget may cut
        result["sparse24"] = _run("sparse24", lambda: sparse24(device), device, budget)
    if "timings" in args.parts:
        result["timings"] = timings(device, sizes, budget, args.quick)
    return result


def failures(result: dict[str, Any]) -> list[str]:
    """Every part that failed (``error``) or missed its tolerance (``passed`` false), by path."""
    out = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        if "error" in node or node.get("passed") is False:
            out.append(f"{path}: {node.get('error', 'outside the tolerance')}")
        for k, v in node.items():
            walk(v, f"{path}/{k}" if path else k)

    walk(result, "")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the plumbing, with --quick)")
    p.add_argument("--quick", action="store_true", help="a few images and steps: the plumbing, not the numbers")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the parts left after this many seconds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        result = run_parts(args, device, Path(work))
    report = {
        **describe(device),
        "torch": torch.__version__,
        "quick": args.quick,
        "load": os.getloadavg(),
        "seconds": time.perf_counter() - t0,
        **result,
    }
    report["failures"] = failures(result)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{args.out}: {len(report['failures'])} failures in {report['seconds']:.0f} s", file=sys.stderr)
    for line in report["failures"]:
        print(f"  {line}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
