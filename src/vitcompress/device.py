"""Devices: which one a command runs on, and moving data to the model's.

The rule of the library is simple: **work happens on the model's device**. A Python user moves the
model (``model.cuda()``) and every method, calibration, evaluation and cost probe follows it; the
command line's ``--device auto|cpu|cuda[:N]`` only decides where the loaded model goes
(:func:`resolve_device`). Data is read on the CPU and moved batch by batch with :func:`to_device`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn

from vitcompress.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
T = TypeVar("T")


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``; ``cpu``, ``cuda``, ``cuda:N`` as given.

    Raises:
        ConfigError: the name is not one of ``auto|cpu|cuda|cuda:N``, or CUDA (device N) is asked for and
            not present.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = "auto" if name is None else str(name).strip().lower()
    if not _PATTERN.match(name):
        raise ConfigError(f"device: {name!r} is not one of {'|'.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name} asked for but torch sees no CUDA device (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device: {name} asked for but torch sees {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
            )
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def to_device(data: T, device: torch.device | str) -> T:
    """``data`` (a tensor, or tuples/lists/dicts of them, as detection targets are) on ``device``.

    A tensor already there is returned as is; CPU tensors go to CUDA without blocking the host.
    """
    device = torch.device(device)
    if isinstance(data, torch.Tensor):
        if data.device == device:
            return data
        return data.to(device, non_blocking=device.type == "cuda")
    if isinstance(data, Mapping):
        return type(data)({k: to_device(v, device) for k, v in data.items()})  # type: ignore[return-value]
    if isinstance(data, (list, tuple)):
        moved = [to_device(v, device) for v in data]
        return type(data)(moved) if not hasattr(data, "_fields") else type(data)(*moved)  # type: ignore[return-value]
    return data


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (for timing on CUDA; nothing on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device | str) -> dict[str, Any]:
    """What a result file should say about the device: its name, and the GPU's model and memory on CUDA."""
    device = torch.device(device)
    out: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1))
    return out
