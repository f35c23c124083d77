"""``vitcompress compress gpusq``: a flat form of :class:`GPUSQConfig` for the command line."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vitcompress.methods.gpusq.config import GPUSQ_RECIPES, GPUSQConfig, gpusq_preset
from vitcompress.options import MethodCommand, option
from vitcompress.result import Result
from vitcompress.validate import one_of, positive_int


@dataclass(frozen=True)
class GPUSQOptions:
    """GPUSQ-ViT on the command line (docs/gpusq.md).

    Attributes:
        preset: gpusq-int8 (2:4 sparsity + INT8) or gpusq-int4 (pair-wise 4:8 + INT4 weights, INT8 activations)
        steps: training steps of stage 1 (sparse distillation), and of stage 2 unless --qat-steps is given
        qat_steps: training steps of stage 2 (sparse QAT) (default: --steps)
        batch_size: training batch of both stages
        eval_stages: evaluate the sparse float and the PTQ model too (--no-eval-stages: only the final one)
        seed: the job's --seed (seeds stage 1; stage 2 uses seed + 1)
        calib_size: the job's --calib-size (default 512)
    """

    preset: str = option("gpusq-int8", choices=GPUSQ_RECIPES)
    steps: int = 300
    qat_steps: int | None = None
    batch_size: int = 64
    eval_stages: bool = True
    seed: int = option(0, cli=False)
    calib_size: int | None = option(None, cli=False)

    def __post_init__(self) -> None:
        one_of("preset", self.preset, GPUSQ_RECIPES)
        positive_int("steps", self.steps)
        positive_int("qat_steps", self.qat_steps, optional=True)
        positive_int("batch_size", self.batch_size)
        positive_int("calib_size", self.calib_size, optional=True)


def build(options: GPUSQOptions, shared: dict[str, Any]) -> GPUSQConfig:
    """The :class:`GPUSQConfig` of ``options`` (``gpusq_preset`` with the job's seed and calibration size)."""
    config = gpusq_preset(options.preset, options.steps, options.qat_steps, options.batch_size, options.seed)
    calib_size = config.calib_size if options.calib_size is None else options.calib_size
    return replace(config, calib_size=calib_size, eval_stages=options.eval_stages)


def summary(result: Result) -> str:
    """One line: top-1 (a detector's box mAP) dense -> sparse float -> final, size and BOPs reduction."""
    from vitcompress.eval.task import headline

    m = result.metrics
    name, fp, q = headline(m)
    key = "bbox_map" if name == "box mAP" else "top1"
    sparse = "" if m.get(f"sparse_float_{key}") is None else f" -> sparse {m[f'sparse_float_{key}']:.2f}"
    return (
        f"{m['model']} / {m['recipe']}: {name} {fp:.2f}{sparse} -> {q:.2f} "
        f"({q - fp:+.2f} pt), size x{m['size_reduction']:.2f} smaller, "
        f"BOPs x{m['bops_reduction']:.1f} fewer; outputs in {result.out}"
    )


COMMAND = MethodCommand(
    name="gpusq",
    help="GPUSQ-ViT: 2:4 / 4:8 sparsity with distillation, then sparse QAT",
    options=GPUSQOptions,
    build=build,
    summary=summary,
)
