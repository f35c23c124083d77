"""Plain-text table of a CostReport (the ``vitcompress cost`` output)."""

from __future__ import annotations

from vitcompress.cost.counter import CostReport


def format_table(report: CostReport) -> str:
    """Per-op rows and totals."""
    lines = [f"{'op':<40} {'kind':<6} {'MACs':>12} {'w bits':>6} {'a bits':>6} {'a2 bits':>7} {'BOPs':>16}"]
    for r in report.layers:
        w = f"{r.w_bits:g}" if r.w_bits is not None else "-"
        a2 = f"{r.a2_bits:g}" if r.a2_bits is not None else "-"
        lines.append(f"{r.name:<40} {r.kind:<6} {r.macs:>12,} {w:>6} {r.a_bits:>6g} {a2:>7} {r.bops:>16,}")
    lines += [
        "",
        f"input {report.input_size}x{report.input_size}: MACs {report.macs:,}  BOPs {report.bops:,}  "
        f"relative BOPs {report.rel_bops:.4f}",
        f"size {report.size_bytes:,} bytes (FP32 {report.fp_size_bytes:,} bytes, "
        f"x{report.fp_size_bytes / max(1, report.size_bytes):.2f} smaller)",
    ]
    return "\n".join(lines)
