"""``export_onnx``: a quantized model to ONNX with QuantizeLinear/DequantizeLinear, a float one as FP32.

The INT8 graph is the export-only copy of :func:`vitcompress.export.convert.to_export_model`,
traced by torch's TorchScript exporter (``dynamo=False``). Why not the dynamo exporter (torch's
default): it traces *through* a ``torch.autograd.Function`` and ignores its ``symbolic``, so the
QDQ pairs come out as ``Div/Round/Clip/Mul`` float ops that no ONNX Runtime kernel fuses; only
``torch.fake_quantize_*`` maps to QDQ there, and that cannot express an int8 weight initializer
with per-channel scales (weights would be re-quantized at run time). The TorchScript exporter
writes exactly the nodes the ``symbolic`` asks for (checked by the tests).
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vitcompress.errors import ConfigError, DataError, StateError
from vitcompress.export.convert import POLICIES, Layout, PointExport, to_export_model
from vitcompress.io import atomic_path
from vitcompress.quant import Quantizer

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "int8", "fp32")
OPSETS = tuple(range(13, 21))  # per-axis QDQ needs 13; the TorchScript exporter stops at 20
DEFAULT_OPSET = 17  # first opset with LayerNormalization as one node
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        precision: ``int8`` (QDQ graph) or ``fp32``.
        opset: ONNX opset.
        input_shape: the traced input shape; the batch axis (0) is dynamic.
        points: one :class:`PointExport` per quantization point (empty for fp32).
        seconds: export time.
    """

    path: str
    precision: str
    opset: int
    input_shape: tuple[int, ...]
    points: tuple[PointExport, ...] = field(default=())
    seconds: float = 0.0

    @property
    def changed_points(self) -> list[PointExport]:
        """Points exported differently from the recipe (promoted to 8 bit, or kept float)."""
        return [p for p in self.points if not p.exact]

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "precision": self.precision,
            "opset": self.opset,
            "input_shape": list(self.input_shape),
            "seconds": self.seconds,
            "points": [p.to_dict() for p in self.points],
            "integer_points": sum(p.exported_as != "float" for p in self.points),
            "float_points": sum(p.exported_as == "float" for p in self.points),
        }


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one active quantizer."""
    return any(isinstance(m, Quantizer) and m.active for m in model.modules())


def _input_shape(model: nn.Module, batch: int) -> tuple[int, ...]:
    from vitcompress.models.registry import input_spec_of

    spec = input_spec_of(model)
    return (batch, spec.in_chans, spec.img_size, spec.img_size)


def _float_copy(model: nn.Module) -> nn.Module:
    """The model itself if float; else a copy with every quantizer disabled (= the float model)."""
    if not any(isinstance(m, Quantizer) for m in model.modules()):
        return model
    import copy

    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, Quantizer):
            m.enabled = False
    return out


def check_export_args(precision: str, opset: int, policy: str, path: Path) -> None:
    """The arguments of :func:`export_onnx`, checked before any work (ConfigError / DataError naming the field)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if opset not in OPSETS:
        raise ConfigError(f"opset must be one of {list(OPSETS)}, got {opset!r}")
    if policy not in POLICIES:
        raise ConfigError(f"policy must be one of {list(POLICIES)}, got {policy!r}")
    if path.is_dir():
        raise DataError(f"out: {path} is a folder; give the .onnx file to write")
    if not path.parent.is_dir():
        raise DataError(f"out: output folder {path.parent} does not exist")


def export_onnx(
    model: nn.Module,
    path: str | Path,
    precision: str = "auto",
    opset: int = DEFAULT_OPSET,
    policy: str = "promote",
    batch: int = 2,
    layout: Layout | None = None,
) -> ExportReport:
    """Export ``model`` to ONNX (atomically: a failed export leaves no file at ``path``).

    Args:
        model: a timm ViT/DeiT/Swin, float or quantized by :func:`vitcompress.quantize.quantize_`.
        path: the ``.onnx`` file to write; its folder must exist.
        precision: ``int8`` (QDQ graph; the model must be quantized), ``fp32`` (float graph; a
            quantized model is exported with its quantizers off) or ``auto`` (int8 if quantized).
        opset: ONNX opset, 13..20.
        policy: points ONNX Runtime cannot run at their bit width (activations below 8 bit, log2):
            ``promote`` to 8 bit, keep ``float``, or ``error``. Reported in ``ExportReport.points``.
        batch: batch size of the traced input; the exported batch axis is dynamic.
        layout: op placement of the INT8 graph (:class:`~vitcompress.export.convert.Layout`; default:
            every choice that was measured to help, ``docs/deploy.md``).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: a bad ``precision``/``opset``/``policy``, or a point the policy refuses.
        StateError: ``precision="int8"`` on a model that is not quantized.
        DataError: the output folder does not exist.
    """
    path = Path(path)
    check_export_args(precision, opset, policy, path)
    quantized = is_quantized(model)
    if precision == "int8" and not quantized:
        raise StateError(
            "precision 'int8' needs a quantized model (run vitcompress.quantize_ first); "
            f"allowed for a float model: {['auto', 'fp32']}"
        )
    precision = precision if precision != "auto" else ("int8" if quantized else "fp32")
    t0 = time.perf_counter()
    points: list[PointExport] = []
    if precision == "int8":
        graph_model, points = to_export_model(model, policy, layout)
    else:
        graph_model = _float_copy(model)
    shape = _input_shape(model, batch)
    _trace(graph_model.eval(), shape, path, opset)
    report = ExportReport(str(path), precision, opset, shape, tuple(points), time.perf_counter() - t0)
    changed = report.changed_points
    if changed:
        log.warning(
            "%d quantization points exported differently from the recipe: %s",
            len(changed),
            "; ".join(f"{p.name}: {p.note}" for p in changed[:6]) + (" …" if len(changed) > 6 else ""),
        )
    log.info("exported %s %s model to %s in %.1f s", precision, type(model).__name__, path, report.seconds)
    return report


def _trace(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> None:
    import onnx

    x = torch.zeros(shape)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic and the exporter's deprecation
        torch.onnx.export(
            model,
            (x,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        onnx.checker.check_model(str(tmp))
