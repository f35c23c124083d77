"""Wall and CPU time of a default Evol-Q run (10 passes, 1,000 images, infoNCE) on vit-fmnist, 1 thread.

Run: python benchmarks/evolq_timing.py   (writes docs/results/evolq_timing.json)
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import vitcompress as vc  # noqa: E402
from vitcompress.data import calibration_subset, load_dataset  # noqa: E402
from vitcompress.methods.evolq import EvolQConfig  # noqa: E402
from vitcompress.methods.evolq.allocator import keep_freed_memory  # noqa: E402
from vitcompress.models import input_spec_of  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    keep_freed_memory()
    model = vc.load_model("vit-fmnist")
    spec = input_spec_of(model)
    calib = calibration_subset(load_dataset(spec, "train"), 1000, seed=0)
    vc.compress_(model, vc.get_preset("fqvit-w4a8"), calib)  # PTQ (not timed)
    t0, c0 = time.perf_counter(), time.process_time()
    r = vc.compress_(model, EvolQConfig(), calib).plan  # the search alone: the model is quantized already
    out = {
        "wall_seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "evaluations": r.evaluations,
        "fitness": [h["fitness"] for h in r.history],
        "threads": torch.get_num_threads(),
        "command": "python benchmarks/evolq_timing.py",
    }
    print(json.dumps(out))
    path = Path(__file__).resolve().parents[1] / "docs" / "results" / "evolq_timing.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
