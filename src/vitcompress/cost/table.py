"""Plain-text table of a :class:`CostReport` (what ``vitcompress cost`` prints)."""

from __future__ import annotations

from vitcompress.cost.report import CostReport, LayerCost

_HEADER = (
    f"{'op':<36} {'kind':<6} {'MACs':>14} {'%':>6} {'w bits':>6} {'a bits':>6} {'a2 bits':>7} "
    f"{'BOPs':>18} {'params':>10} {'bytes':>10}"
)


def _bits(b: float | None) -> str:
    return "-" if b is None else f"{b:.3g}"


def _row(r: LayerCost, total_macs: int) -> str:
    share = 100.0 * r.macs / total_macs if total_macs else 0.0
    size = f"{r.size_bits / 8:,.0f}" if r.kind != "matmul" else "-"
    params = f"{r.params:,}" if r.kind != "matmul" else "-"
    return (
        f"{r.name:<36} {r.kind:<6} {r.macs:>14,} {share:>6.2f} {_bits(r.w_bits):>6} {_bits(r.a_bits):>6} "
        f"{_bits(r.a2_bits):>7} {r.bops:>18,} {params:>10} {size:>10}"
    )


def format_table(report: CostReport) -> str:
    """Per-op rows (MACs, share of all MACs, bits, BOPs, weight params and bytes) followed by totals.

    Args:
        report: the result of :func:`vitcompress.cost.cost`.

    Returns:
        The table as one string (no trailing newline).
    """
    lines = [_HEADER, "-" * len(_HEADER)]
    lines += [_row(r, report.macs) for r in report.layers]
    matmul = sum(r.macs for r in report.layers if r.kind == "matmul")
    lines += [
        "",
        f"input {report.input_shape[1]}x{report.input_shape[2]}, per image: MACs {report.macs:,} "
        f"({report.macs / 1e9:.4f} G; attention matmuls {matmul:,})",
        f"BOPs {report.bops:,} of {report.bops_fp32:,} at 32 bit: relative BOPs {report.rel_bops:.4f}",
        f"size {report.size_bytes:,} bytes (all 32 bit: {report.fp_size_bytes:,} bytes, "
        f"x{report.fp_size_bytes / max(1, report.size_bytes):.2f} smaller)",
    ]
    return "\n".join(lines)
