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

import copy
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vitcompress.device import model_device
from vitcompress.errors import ConfigError, DataError, StateError, UnsupportedModelError
from vitcompress.export.convert import POLICIES, Layout, PointExport, to_export_model
from vitcompress.io import atomic_path
from vitcompress.models.inputs import check_runs
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
        float_modules: int8: every module with weights or an activation matmul that no quantizer
            covers (``{"name", "type", "why"}``), exported in float; empty for fp32.
        model_device: where the model was; the export always traces on the CPU (a CPU copy of a model elsewhere).
    """

    path: str
    precision: str
    opset: int
    input_shape: tuple[int, ...]
    points: tuple[PointExport, ...] = field(default=())
    seconds: float = 0.0
    float_modules: tuple[dict[str, str], ...] = field(default=())
    model_device: str = "cpu"

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
            "float_modules": [dict(m) for m in self.float_modules],
            "model_device": self.model_device,
            "traced_on": "cpu",
        }


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds at least one active quantizer."""
    return any(isinstance(m, Quantizer) and m.active for m in model.modules())


def input_shape(model: nn.Module, batch: int, input_size: int | tuple[int, ...] | None = None) -> tuple[int, ...]:
    """(batch, C, H, W) of the traced input: the model's own size, or ``input_size`` where it says none
    (:func:`vitcompress.models.inputs.resolve_input_shape`; ConfigError naming ``--input-size`` otherwise)."""
    from vitcompress.models.inputs import resolve_input_shape

    return (batch, *resolve_input_shape(model, input_size))


def _float_modules(model: nn.Module) -> tuple[dict[str, str], ...]:
    """The quantized model's modules left in float (``vitcompress.nn.convert.float_modules``)."""
    from vitcompress.nn.convert import float_modules

    return tuple({"name": m.name, "type": m.type, "why": m.why} for m in float_modules(model))


def _float_copy(model: nn.Module) -> nn.Module:
    """The model itself if float; else a copy with every quantizer disabled (= the float model)."""
    if not any(isinstance(m, Quantizer) for m in model.modules()):
        return model
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, Quantizer):
            m.enabled = False
    return out


def cpu_copy(model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU; else a CPU copy (``model`` stays where it is). The parameters and buffers are
    copied straight to the host, so the device never holds the model twice."""
    if model_device(model).type == "cpu":
        return model
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(p.detach().cpu(), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = b.detach().cpu()
    return copy.deepcopy(model, memo).cpu()  # .cpu(): tensors a module keeps outside its parameters and buffers


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
    input_size: int | tuple[int, ...] | None = None,
) -> ExportReport:
    """Export ``model`` to ONNX (atomically: a failed export leaves no file at ``path``).

    Args:
        model: an image model (timm, Hugging Face), float or quantized by :func:`vitcompress.quantize.quantize_`.
        path: the ``.onnx`` file to write; its folder must exist.
        precision: ``int8`` (QDQ graph; the model must be quantized), ``fp32`` (float graph; a
            quantized model is exported with its quantizers off) or ``auto`` (int8 if quantized).
        opset: ONNX opset, 13..20.
        policy: points ONNX Runtime cannot run at their bit width (activations below 8 bit, log2):
            ``promote`` to 8 bit, keep ``float``, or ``error``. Reported in ``ExportReport.points``.
        batch: batch size of the traced input; the exported batch axis is dynamic.
        layout: op placement of the INT8 graph (:class:`~vitcompress.export.convert.Layout`; default:
            every choice that was measured to help, ``docs/deploy.md``).
        input_size: image size, one value (square) or (height, width), for a model that does not say
            its own (no timm ``patch_embed``, ``pretrained_cfg`` or ``config.image_size``).

    The export works from a CPU copy of a model on another device (``model`` is not moved).

    Returns:
        An :class:`ExportReport`.

    Raises:
        ConfigError: a bad ``precision``/``opset``/``policy``, a point the policy refuses, or no input
            size known (pass ``input_size``).
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
    shape = input_shape(model, batch, input_size)  # fail before converting
    where = str(model_device(model))
    model = cpu_copy(model)  # traced on the CPU: the ONNX file's constants are host tensors whatever the device
    t0 = time.perf_counter()
    points: list[PointExport] = []
    floats: tuple[dict[str, str], ...] = ()
    with tqdm(total=3, desc=f"export {precision}", leave=False) as bar:  # convert, check, trace
        if precision == "int8":
            floats = _float_modules(model)
            graph_model, points = to_export_model(model, policy, layout)
        else:
            graph_model = _float_copy(model)
        bar.update()
        check_runs(graph_model, shape[1:])  # a size the model cannot run: one line naming --input-size
        bar.update()
        _trace(graph_model.eval(), shape, path, opset)
        bar.update()
    seconds = time.perf_counter() - t0
    report = ExportReport(str(path), precision, opset, shape, tuple(points), seconds, floats, model_device=where)
    changed = report.changed_points
    if changed:
        log.warning(
            "%d quantization points exported differently from the recipe: %s",
            len(changed),
            "; ".join(f"{p.name}: {p.note}" for p in changed[:6]) + (" …" if len(changed) > 6 else ""),
        )
    if floats:
        log.warning(
            "%d modules exported in float (no quantizer covers them): %s",
            len(floats),
            "; ".join(f"{m['name']} ({m['type']}): {m['why']}" for m in floats[:6]) + (" …" if len(floats) > 6 else ""),
        )
    log.info("exported %s %s model to %s in %.1f s", precision, type(model).__name__, path, report.seconds)
    return report


def logits_of(out) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, a Hugging Face output's ``logits``, or the
    first tensor of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise UnsupportedModelError(f"the model returns {type(out).__name__}; export needs logits (a tensor)")


class LogitsOnly(nn.Module):
    """``model`` called on the image alone, returning its logits tensor only (Hugging Face models return an
    output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def _trace(model: nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> None:
    import onnx

    x = torch.zeros(shape)
    # traced through a forward that takes only the image: the tracer would turn a model's keyword defaults
    # into graph inputs (EVA's ``is_causal`` becomes a tensor that SDPA refuses)
    model = LogitsOnly(model)
    model.training = model.model.training  # the exporter restores this mode recursively: keep the model's own
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
