"""Wall and CPU time of one training step of each reference detector at the scene size, and of its PTQ (#19).

One AdamW step (forward with losses, backward, step) of the default Swin and ViT detectors on a batch of the
default train scenes, at ``--threads`` threads; the median of ``--steps`` steps after one warm-up step. With
``--ptq N``: W8A8 calibration on N train scenes against one float forward over the same N scenes (random
weights: times only). The machine's load average is recorded beside the times (the CPU is shared).

Run: python benchmarks/detection_step.py --threads 1 [--steps 3] [--batch 4] [--ptq 32] [--out FILE.json]
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from vitcompress.data.scenes import collate_detection, load_scenes  # noqa: E402
from vitcompress.models.detection import DetectorConfig, build_detector  # noqa: E402


def step_times(backbone: str, head: str, batch: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(backbone=backbone, head=head)).train()
    train = load_scenes("train")
    images, targets = collate_detection([train[i] for i in range(batch)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    walls, cpus = [], []
    for _ in range(steps + 1):  # the first step warms the allocator up: not counted
        t0, c0 = time.perf_counter(), time.process_time()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {
        "backbone": backbone,
        "head": head,
        "batch": batch,
        "wall_s": statistics.median(walls[1:]),
        "cpu_s": statistics.median(cpus[1:]),
    }


def ptq_times(backbone: str, n: int) -> dict:
    """W8A8 PTQ of the default Mask R-CNN detector on ``n`` train scenes vs one float pass over them."""
    from vitcompress.config import resolve_recipe
    from vitcompress.data.calib import first_images
    from vitcompress.quantize import quantize_

    torch.manual_seed(0)
    model = build_detector(DetectorConfig(backbone=backbone)).eval()
    x = first_images(load_scenes("train", masks=False), n, batch_size=8)
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in x.split(8):
            model(b)
    float_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantize_(model, resolve_recipe("w8a8"), list(x.split(8)))
    return {"backbone": backbone, "images": n, "float_pass_s": float_s, "ptq_w8a8_s": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", nargs="+", default=["mask_rcnn"])
    p.add_argument("--ptq", type=int, default=0, help="also time W8A8 PTQ on this many scenes")
    p.add_argument("--no-train", action="store_true", help="skip the training steps")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = (
        [] if args.no_train else [step_times(b, h, args.batch, args.steps) for b in ("swin", "vit") for h in args.heads]
    )
    ptq = [ptq_times(b, args.ptq) for b in ("swin", "vit")] if args.ptq else []
    out = {"threads": args.threads, "load_before": load_before, "load_after": os.getloadavg()[0], "rows": rows}
    if ptq:
        out["ptq"] = ptq
    print(json.dumps(out, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
