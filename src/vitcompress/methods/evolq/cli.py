"""``vitcompress compress evolq``: PTQ with ``--recipe``, then Evol-Q; options = :class:`EvolQConfig`'s fields."""

from __future__ import annotations

from typing import Any

from vitcompress.methods.evolq.allocator import keep_freed_memory
from vitcompress.methods.evolq.config import EvolQConfig
from vitcompress.options import MethodCommand


def _build(options: EvolQConfig, shared: dict[str, Any]) -> EvolQConfig:
    keep_freed_memory()  # the CLI process owns its allocator: a ~3x faster search (allocator.py)
    return options


def _summary(result: Any) -> str:
    m, e = result.metrics, result.metrics["evolq"]
    ptq = "" if m.get("ptq_top1") is None else f" -> {m['ptq_top1']:.2f} (PTQ)"
    return (
        f"{m['model']} / evolq {m['recipe']}: top-1 {m['fp_top1']:.2f}{ptq} -> {m['q_top1']:.2f} (Evol-Q) "
        f"({m['q_top1'] - m['fp_top1']:+.2f} pt vs float), fitness {e['fitness_before']:.6f} -> "
        f"{e['fitness_after']:.6f}, rel. BOPs {m['rel_bops']:.4f}, size {m['fp_size_bytes']:,} -> "
        f"{m['size_bytes']:,} bytes; outputs in {result.out}"
    )


COMMAND = MethodCommand(
    name="evolq",
    help="Evol-Q: PTQ with --recipe, then an evolutionary search of the attention layers' quantization scales "
    "(resumable; docs/evolq.md)",
    options=EvolQConfig,
    build=_build,
    summary=_summary,
)
