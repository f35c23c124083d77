"""Evol-Q's part of a job's outputs: the passes chart and the ``report.md`` section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

PASSES_CHART = "evolq_passes.png"


def passes_chart(
    path: str | Path,
    title: str,
    runs: Sequence[dict[str, Any]],
    top1_label: str = "top-1 (%)",
    fitness: str = "infoNCE",
) -> None:
    """Top-1 (left, where the history has it) and calibration fitness minus its start (right) per pass.

    Args:
        path: the PNG to write.
        title: the model's name, put in front of each panel's title.
        runs: ``{"label": ..., "history": EvolQResult.history}`` per curve.
        top1_label: the y label of the top-1 panel (say on which images it was measured).
        fitness: the fitness's name, for the y label of the fitness panel.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from vitcompress.report.charts import save_figure

    with_top1 = any(e["top1"] is not None for run in runs for e in run["history"])
    fig, axes = plt.subplots(1, 2 if with_top1 else 1, figsize=(9 if with_top1 else 4.8, 3.4), dpi=110)
    a1, a2 = axes if with_top1 else (None, axes)
    for run in runs:
        h = run["history"]
        if a1 is not None:
            a1.plot([e["pass"] for e in h], [e["top1"] for e in h], marker="o", ms=3, label=run["label"])
        a2.plot(
            [e["pass"] for e in h], [e["fitness"] - h[0]["fitness"] for e in h], marker="o", ms=3, label=run["label"]
        )
    a2.set_xlabel("pass")
    a2.set_ylabel(f"{fitness} fitness − PTQ fitness")
    a2.set_title(f"{title}: calibration fitness vs pass")
    a2.grid(alpha=0.3)
    for a in (a1, a2):
        if a is not None:
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if a1 is not None:
        a1.set_xlabel("pass")
        a1.set_ylabel(top1_label)
        a1.set_title(f"{title}: top-1 vs pass")
        a1.grid(alpha=0.3)
        a1.legend(fontsize=7)
    else:
        a2.legend(fontsize=7)
    save_figure(fig, path)


def report_section(e: dict[str, Any]) -> str:
    """Markdown from :meth:`EvolQResult.to_dict`: the settings and one row per pass (fitness, top-1, time)."""
    c = e["config"]
    start, end = e["history"][0]["top1"], e["history"][-1]["top1"]
    lines = [
        "",
        "## Evol-Q",
        "",
        f"Evolutionary search of the quantization scales of {', '.join(f'`{t}`' for t in c['targets'])} "
        f"({'weights and inputs' if c['search_activations'] else 'weights'}) in {len(e['blocks'])} blocks, "
        f"{c['block_order'].replace('_', ' ')}: {c['passes']} passes × {c['cycles']} cycles, population "
        f"{c['population']}, tournament {c['tournament']}, {c['fitness']} fitness on {c['calib_size']} "
        f"calibration images, seed {c['seed']}; {e['evaluations']} candidate evaluations, "
        f"{e['seconds']:.1f} s{' (resumed)' if e['resumed'] else ''}. Selection uses the calibration fitness "
        f"only; the top-1 column is measured, never used.",
        "",
    ]
    if start is not None and end is not None:
        lines += [f"Evaluation top-1: {start:.2f} % after PTQ, {end:.2f} % after Evol-Q ({end - start:+.2f} pt).", ""]
    lines += ["| pass | calibration fitness | evaluation top-1 (%) | seconds |", "|---:|---:|---:|---:|"]
    for h in e["history"]:
        top1 = "—" if h["top1"] is None else f"{h['top1']:.2f}"
        lines.append(f"| {h['pass']} | {h['fitness']:.6f} | {top1} | {h['seconds']:.1f} |")
    return "\n".join(lines) + "\n"
