"""The methods on the reference detectors (#19): COCO mAP on the val scenes, with the paired noise of the mAP.

Every configuration compresses a fresh copy of the float detector with the library's own calls (``compress_``,
``mixaq_``), runs it over the val scenes (:func:`vitcompress.eval.detection.detect`), and compares its detections
with the float detector's image by image (:func:`vitcompress.eval.detection_noise.paired_bootstrap`: the same
bootstrap draws of the val scenes for both). Costs are the cost model's BOPs per image, of the transformer
(``backbone.body``) and of the whole detector. Detections are cached per configuration (``--cache``), and the
JSON is rewritten after each configuration, so an interrupted run continues where it stopped.

Configurations:
  fp                 the float detector
  ptq:PRESET         a PTQ preset (w8a8, w6a6, w4a8, ...): transformer at its bits, pyramid and heads at 8
  flbq:B             F-LBQ, DP per layer, weight budget B bits (activations 8 bit)
  uniform:B          the same quantization with every transformer layer at B bits (F-LBQ's baseline)
  mixaq:R            training-free MixA-Q (W8A8, A4 low branch) at ratio R in every group (Swin only)
  mixaq-search       training-free MixA-Q with its NSGA-II search (``--search-images`` held-out train scenes)
  mixaq-saqa         MixA-Q after its adaptation (SAQA, ``--saqa-steps``), then the same search

Run: python benchmarks/detection.py --model swin-det-scenes --configs fp ptq:w8a8 mixaq:0.5 --threads 1 \
        --out docs/results/detection_swin.json
"""

import os

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported (torch imports it)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from vitcompress.api import compress_  # noqa: E402
from vitcompress.config import get_preset  # noqa: E402
from vitcompress.cost import cost  # noqa: E402
from vitcompress.data.datasets import calibration_subset  # noqa: E402
from vitcompress.eval.detection import Detections, detect, detection_metrics  # noqa: E402
from vitcompress.eval.detection_noise import paired_bootstrap  # noqa: E402
from vitcompress.eval.task import detection_splits  # noqa: E402
from vitcompress.io import write_json  # noqa: E402
from vitcompress.methods.flbq import FLBQConfig  # noqa: E402
from vitcompress.methods.mixaq import MixAQConfig, MixAQSearchConfig, SAQAConfig, mixaq_, mixed_cost  # noqa: E402
from vitcompress.methods.mixaq.detector import backbone_bops  # noqa: E402
from vitcompress.methods.mixaq.model import model_groups, set_ratios  # noqa: E402
from vitcompress.models.registry import load_model  # noqa: E402

log = logging.getLogger("detection-bench")


_TWO_BRANCH: dict = {}  # the calibrated two-branch MixA-Q detector, shared by the mixaq:R configurations


def _compress(name: str, model, calib, args) -> tuple:
    """(the compressed model, what the method reports) for configuration ``name`` (``model``: a float copy)."""
    kind, _, value = name.partition(":")
    if kind == "fp":
        return model, {}
    if kind == "ptq":
        compress_(model, get_preset(value), calib)
        return model, {}
    if kind in ("flbq", "uniform"):
        bits = {"bits": (int(value),)} if kind == "uniform" else {}
        result = compress_(model, FLBQConfig(budget=float(value), n_images=args.curve_images, **bits), calib)
        return model, {"avg_bits": result.metrics.get("avg_bits"), "plan": result.metrics.get("layer_bits")}
    if kind == "mixaq":  # calibrated once (at the default calibration ratio), then set to each ratio
        if "mixaq" not in _TWO_BRANCH:
            mixaq_(model, calib, get_preset("w8a8"), 4, batch_size=8)
            _TWO_BRANCH["mixaq"] = model
        model = copy.deepcopy(_TWO_BRANCH["mixaq"])
        set_ratios(model, [float(value)] * len(model_groups(model)), upper=1.0)
        return model, {"ratio": float(value)}
    if kind in ("mixaq-search", "mixaq-saqa"):
        saqa = SAQAConfig(steps=args.saqa_steps, batch_size=4, lr=args.saqa_lr) if kind == "mixaq-saqa" else None
        search = MixAQSearchConfig(population=args.population, generations=args.generations)
        config = MixAQConfig(eval_images=args.search_images, choose=args.choose, search=search, saqa=saqa)
        result = compress_(model, config, calib, state_dir=args.cache / f"{name}-state", resume=True)
        return model, {"ratios": result.plan, "held_out": result.metrics.get("held_out")}
    raise SystemExit(f"unknown configuration {name!r}: fp, ptq:PRESET, flbq:B, uniform:B, mixaq:R, mixaq-search")


def _costs(model, name: str) -> dict:
    report = mixed_cost(model) if name.startswith("mixaq") else cost(model)
    return {"bops": report.bops, "backbone_bops": backbone_bops(report), "macs": report.macs}


def _save_dets(path: Path, dets: Detections) -> None:
    masks = [
        m | {"segmentation": m["segmentation"] | {"counts": m["segmentation"]["counts"].decode()}}
        for m in dets.masks or []
    ]
    path.write_text(json.dumps({"boxes": dets.boxes, "masks": masks if dets.masks is not None else None,
                                "image_ids": dets.image_ids, "seconds": dets.seconds}))  # fmt: skip


def _load_dets(path: Path, ground_truth: dict) -> Detections:
    d = json.loads(path.read_text())
    return Detections(d["boxes"], d["masks"], d["image_ids"], ground_truth, d["seconds"])


def _noise(fp: Detections, q: Detections, resamples: int) -> dict:
    out = {"bbox": paired_bootstrap(fp.ground_truth, fp.boxes, q.boxes, fp.image_ids, "bbox", resamples).as_dict()}
    if fp.masks is not None and q.masks is not None:
        out["segm"] = paired_bootstrap(fp.ground_truth, fp.masks, q.masks, fp.image_ids, "segm", resamples).as_dict()
    return out


def run_config(name: str, float_model, calib, val, fp: Detections | None, args) -> tuple[dict, Detections]:
    t0 = time.perf_counter()
    model, info = _compress(name, copy.deepcopy(float_model), calib, args)
    t1 = time.perf_counter()
    path = args.cache / f"{name.replace(':', '-')}.dets.json"
    masks = name in args.masks and bool(getattr(model, "roi_heads", None) and model.roi_heads.has_mask())
    if not masks and getattr(model, "roi_heads", None) is not None:
        model.roi_heads.mask_roi_pool = None  # boxes only: the mask head does not run
    if path.is_file():
        dets = _load_dets(path, val.coco)
    else:
        dets = detect(model, val, batch_size=8, limit=args.limit, masks=masks)
        _save_dets(path, dets)
    row = {"config": name, **info, **detection_metrics(dets).as_dict(), **_costs(model, name)}
    row.update(compress_seconds=t1 - t0, eval_seconds=time.perf_counter() - t1, load=os.getloadavg()[0])
    if fp is not None:
        row["paired"] = _noise(fp, dets, args.resamples)
    return row, dets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a detector: zoo name or folder")
    p.add_argument("--configs", nargs="+", default=["fp", "ptq:w8a8"])
    p.add_argument("--calib-size", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="val scenes (default: all 500)")
    p.add_argument("--masks", nargs="*", default=["fp", "ptq:w8a8"], help="configurations whose masks are scored")
    p.add_argument("--resamples", type=int, default=200)
    p.add_argument("--curve-images", type=int, default=32)
    p.add_argument("--search-images", type=int, default=100)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--generations", type=int, default=2)
    p.add_argument("--choose", type=float, default=0.7)
    p.add_argument("--saqa-steps", type=int, default=100)
    p.add_argument("--saqa-lr", type=float, default=1e-5)
    p.add_argument("--pairs", nargs="*", default=[], metavar="A/B", help="also compare configuration B with A")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache", type=Path, default=None, help="detections cache (default: runs/bench_det/MODEL)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.cache = args.cache or Path("runs/bench_det") / Path(args.model).name
    args.cache.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model).eval()
    train, val, _ = detection_splits(model)
    calib = calibration_subset(train, args.calib_size, seed=0)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    machine = f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    result.update(model=args.model, calib_size=args.calib_size, resamples=args.resamples, machine=machine)
    done = {r["config"] for r in result["rows"]}
    fp_row, fp = run_config("fp", model, calib, val, None, args)
    if "fp" not in done:
        result["rows"].append(fp_row)
    for name in args.configs:
        if name == "fp" or name in done:
            continue
        row, _ = run_config(name, model, calib, val, fp, args)
        result["rows"].append(row)
        log.info("%s: box mAP %.2f (fp %.2f), paired delta %.2f +- %.2f", name, row["bbox_map"], fp_row["bbox_map"],
                 row["paired"]["bbox"]["delta"], row["paired"]["bbox"]["se_delta"])  # fmt: skip
        write_json(args.out, result)
    result["pairs"] = {**result.get("pairs", {}), **_pairs(args, val.coco)}
    write_json(args.out, result)


def _pairs(args, ground_truth: dict) -> dict:
    """Paired bootstrap of the box mAP between two cached configurations (``A/B``: B minus A)."""
    out = {}
    for pair in args.pairs:
        a, b = (_load_dets(args.cache / f"{n.replace(':', '-')}.dets.json", ground_truth) for n in pair.split("/"))
        out[pair] = paired_bootstrap(ground_truth, a.boxes, b.boxes, a.image_ids, "bbox", args.resamples).as_dict()
        log.info("%s: box mAP delta %.2f +- %.2f", pair, out[pair]["delta"], out[pair]["se_delta"])
    return out


if __name__ == "__main__":
    main()
