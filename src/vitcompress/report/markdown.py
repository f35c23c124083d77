"""The markdown report of a compression run."""

from __future__ import annotations

import math
from collections.abc import Sequence

from vitcompress.report.analysis import LayerQuantStats


def _fmt_db(v: float) -> str:
    return "exact" if math.isinf(v) else f"{v:.1f}"


# metrics.json accuracy keys (fp_<key>, q_<key>) -> row label: a classifier's, a detector's (COCO AP, 0-100)
ACCURACY_ROWS = {
    "top1": "top-1 (%)",
    "top5": "top-5 (%)",
    "bbox_map": "box mAP",
    "bbox_map50": "box mAP@.5",
    "bbox_map75": "box mAP@.75",
    "segm_map": "mask mAP",
    "segm_map50": "mask mAP@.5",
}


def _accuracy_rows(m: dict) -> list[str]:
    rows = []
    for key, label in ACCURACY_ROWS.items():
        fp, q = m.get(f"fp_{key}"), m.get(f"q_{key}")
        if fp is not None and q is not None:
            rows.append(f"| {label} | {fp:.2f} | {q:.2f} | {q - fp:+.2f} |")
    return rows


def compression_report(metrics: dict, layers: Sequence[LayerQuantStats], charts: Sequence[str]) -> str:
    """Report text: accuracy FP vs compressed, cost, and a per-layer table of bits and error."""
    m = metrics
    lines = [
        f"# vitcompress report: {m['model']} with recipe `{m['recipe']}`",
        "",
        f"Evaluated on {m['eval_images']} test images; calibrated on {m['calib_size']} training images "
        f"(seed {m['seed']}); {m['seconds']:.1f} s in all.",
        "",
        "| | FP32 | compressed | change |",
        "|---|---:|---:|---:|",
        *_accuracy_rows(m),
        f"| MACs | {m['macs']:,} | {m['macs']:,} | |",
        f"| BOPs | {m['fp_bops']:,} | {m['bops']:,} | ×{m['fp_bops'] / max(m['bops'], 1):.1f} fewer |",
        f"| size (bytes) | {m['fp_size_bytes']:,} | {m['size_bytes']:,} | "
        f"×{m['fp_size_bytes'] / max(m['size_bytes'], 1):.1f} smaller |",
        "",
        f"Relative BOPs (vs all 32 bit): {m['rel_bops']:.4f}.",
        "",
    ]
    lines += _coverage(m)
    if layers:
        lines += _layer_table(layers)
    if charts:
        lines += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    return "\n".join(lines)


def _coverage(m: dict) -> list[str]:
    """What is quantized: attention coverage and every module left in float, with the reason."""
    if "float_modules" not in m:
        return []
    lines = [
        "## What is quantized",
        "",
        f"Attention: {m['quantized_attention']} of {m['attention_modules']} attention blocks have their softmax "
        "output and both matmuls quantized.",
        "",
    ]
    if not m["float_modules"]:
        return lines + ["Every module with weights or an activation matmul is quantized.", ""]
    lines += [f"Left in float ({len(m['float_modules'])}):", "", "| module | type | why |", "|---|---|---|"]
    return lines + [f"| `{f['name']}` | {f['type']} | {f['why']} |" for f in m["float_modules"]] + [""]


def _layer_table(layers: Sequence[LayerQuantStats]) -> list[str]:
    lines = [
        "## Per layer",
        "",
        "Weight SQNR compares each layer's weight with its quantized weight; output SQNR compares the layer's "
        "output in the float and the quantized model on one calibration batch (errors of earlier layers "
        "included).",
        "",
        "| layer | weight bits | input bits | weight SQNR (dB) | output SQNR (dB) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| `{r.name}` | {r.w_bits:g} | {r.a_bits} | {_fmt_db(r.weight_sqnr_db)} | {_fmt_db(r.output_sqnr_db)} |"
        for r in layers
    ]
    return lines + [""]
