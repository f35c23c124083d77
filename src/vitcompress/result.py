"""What every compression method returns: :class:`Result`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

# an extra output file: a JSON-able object, or a function that writes the file at the path it is given
OutputFile = Any | Callable[[Path], None]


@dataclass
class Result:
    """The outcome of :func:`vitcompress.compress_` (and, with the evaluation filled in, of a job).

    Attributes:
        model: the compressed model (the object passed in, changed in place).
        method: ``ptq``, ``evolq``, ``flbq``, ``gpusq`` or ``mixaq``.
        config: the config that ran.
        metrics: numbers; from ``compress_`` only the method's own (timings, per-stage accuracy, search
            history), from a job also the float and compressed accuracy and cost.
        plan: what a search found, as data that can be saved and applied (an Evol-Q result, a bit plan,
            a ratio vector); None for PTQ.
        reference: the float model per-layer errors compare with (default: the model before the method;
            GPUSQ-ViT compares with its sparse float model).
        cost: a cost report, where :func:`vitcompress.cost.cost` does not describe the model (MixA-Q's
            two-branch blocks); None = measure it.
        files: extra outputs of a job, file name -> JSON-able object or writer function.
        report: the method's section of ``report.md`` (markdown), or a function of the job's full metrics
            that returns it.
        save_model: whether ``model/`` is written (a model :func:`vitcompress.restore` can rebuild).
        layer_report: whether the per-layer table and charts apply to this model.
        out: the output folder of a job (None from ``compress_``).
    """

    model: nn.Module
    method: str
    config: Any
    metrics: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    reference: nn.Module | None = None
    cost: Any = None
    files: dict[str, OutputFile] = field(default_factory=dict)
    report: str | Callable[[dict[str, Any]], str] = ""
    save_model: bool = True
    layer_report: bool = True
    out: Path | None = None
