"""PTQ calibration speed: one float pass, vitcompress ``w8a8`` and ``fqvit-w4a8``, and NVIDIA ModelOpt's
``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` on the same model and images, timed alternately.

The images are built as a list of batches before any timing (none is decoded inside a timed call); each
contender gets a fresh deep copy of the float model (copied outside the timed call); the order of the
contenders rotates between repeats, so a change in machine load hits all of them alike. ModelOpt is a
benchmark-only dependency (``pip install -e ".[bench]"``); without it its row is left out.

    python benchmarks/ptq_speed.py --models vit-fmnist swin-fmnist --images 1000 --batch 64
    python benchmarks/ptq_speed.py --models timm:deit_small_patch16_224 --images 32 --batch 8 --repeats 2

Writes JSON (``--out``): per model the wall and CPU seconds of every repeat, their medians, and the ratios
``w8a8 / float``, ``fqvit-w4a8 / float`` and ``w8a8 / modelopt`` of the medians, with the machine load. On a
shared machine the CPU-time ratios (one thread: the process's own work) are the steadier ones.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside timed calls (tqdm reads it on import)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import vitcompress as vc  # noqa: E402


def load(name: str, images: int, batch: int, seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    """A float model and its calibration batches: a zoo model with Fashion-MNIST training images, or
    ``timm:NAME`` with random weights and random 224-px images (weights and pixels do not change the time)."""
    torch.manual_seed(seed)
    if name.startswith("timm:"):
        import timm

        model = timm.create_model(name[5:], pretrained=False).eval()
        data = torch.randn(images, 3, 224, 224)
        return model, list(data.split(batch))
    from vitcompress.data import calibration_subset, load_dataset
    from vitcompress.data.calib import first_batches
    from vitcompress.models import input_spec_of

    model = vc.load_model(name).eval()
    calib = calibration_subset(load_dataset(input_spec_of(model), "train"), images, seed=seed)
    return model, first_batches(calib, images, batch_size=batch)


@torch.no_grad()
def float_pass(model: nn.Module, batches: list[torch.Tensor]) -> None:
    for x in batches:
        model(x)


def contenders(batches: list[torch.Tensor]) -> dict[str, Callable[[nn.Module], object]]:
    out = {
        "float": lambda m: float_pass(m, batches),
        "w8a8": lambda m: vc.quantize_(m, vc.get_preset("w8a8"), batches),
        "fqvit-w4a8": lambda m: vc.quantize_(m, vc.get_preset("fqvit-w4a8"), batches),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError:
        return out

    def modelopt(m: nn.Module) -> None:
        with torch.no_grad():  # as vitcompress's calibration pass
            mtq.quantize(m, mtq.INT8_DEFAULT_CFG, lambda model: float_pass(model, batches))

    out["modelopt-int8"] = modelopt
    return out


def time_model(name: str, images: int, batch: int, repeats: int) -> dict:
    model, batches = load(name, images, batch)
    runs = contenders(batches)
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(repeats + 1):  # repeat 0 warms up (allocator, lazy imports, first-call costs): not kept
        order = names[r % len(names) :] + names[: r % len(names)]
        for key in order:
            m = copy.deepcopy(model)
            gc.collect()
            t0, c0 = time.perf_counter(), time.process_time()
            runs[key](m)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r:
                seconds[key].append(dt)
                cpu[key].append(dc)
            print(f"{name} repeat {r} {key}: {dt:.2f} s wall, {dc:.2f} s CPU", flush=True)
            del m
    median = {k: statistics.median(v) for k, v in seconds.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "images": images,
        "batch": batch,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "median": median,
        "median_cpu": median_cpu,
        "ratios": _ratios(median),
        "ratios_cpu": _ratios(median_cpu),
    }


def _ratios(median: dict[str, float]) -> dict[str, float]:
    ratios = {
        "w8a8_over_float": median["w8a8"] / median["float"],
        "fqvit-w4a8_over_float": median["fqvit-w4a8"] / median["float"],
    }
    if "modelopt-int8" in median:
        ratios["w8a8_over_modelopt"] = median["w8a8"] / median["modelopt-int8"]
    return ratios


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["vit-fmnist", "swin-fmnist"])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    result = {
        "command": "python benchmarks/ptq_speed.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "threads": a.threads,
        "load_before": os.getloadavg(),
        "models": {m: time_model(m, a.images, a.batch, a.repeats) for m in a.models},
        "load_after": os.getloadavg(),
    }
    print(
        json.dumps({m: {k: r[k] for k in ("ratios", "ratios_cpu", "median_cpu")} for m, r in result["models"].items()})
    )
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
