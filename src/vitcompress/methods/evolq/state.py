"""Resumable Evol-Q state: written atomically after every block, checked against the run on resume.

The state holds the position (next pass, next block), every searched scale, the random generator's
state, the current fitness and the history, plus fingerprints of what the run depends on: the
model's weights, its recipe and PTQ quantization parameters, the config and the calibration images.
Resuming with any of them changed is an error naming it, never a silent restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress.errors import StateError
from vitcompress.io import atomic_path
from vitcompress.models.checkpoint import load_error
from vitcompress.quant import Quantizer

STATE_VERSION = 1
_KINDS = {
    "weights": "model weights",
    "recipe": "quantization recipe",
    "ptq": "PTQ quantization parameters",
    "config": "Evol-Q config",
    "calib": "calibration images",
}


def _digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def fingerprints(model: nn.Module, recipe: dict, config: dict, calib: list[torch.Tensor]) -> dict[str, str]:
    """sha256 of each thing a run depends on (call before the search changes any scale)."""
    quant_buffers = [
        (f"{n}.{b}", t)
        for n, m in model.named_modules()
        if isinstance(m, Quantizer)
        for b, t in m.named_buffers(recurse=False)
    ]
    text = [("recipe", repr(sorted(recipe.items()))), ("config", repr(sorted(config.items())))]
    return {
        "weights": _digest(model.named_parameters()),
        "recipe": hashlib.sha256(text[0][1].encode()).hexdigest(),
        "ptq": _digest(quant_buffers),
        "config": hashlib.sha256(text[1][1].encode()).hexdigest(),
        "calib": _digest((str(i), x) for i, x in enumerate(calib)),
    }


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a killed process leaves the previous state intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": STATE_VERSION, **state}, tmp)


def load_state(path: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Read a state and check its fingerprints against ``expected``; StateError naming what differs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or corrupt file: say which file (torch's message spans many lines)
        raise StateError(f"cannot read Evol-Q state {path}: {load_error(e)}; remove it to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "fingerprints" not in state:
        raise StateError(f"{path} is not an Evol-Q state (version {STATE_VERSION})")
    for key, label in _KINDS.items():
        if state["fingerprints"].get(key) != expected[key]:
            raise StateError(
                f"Evol-Q state {path} was written for different {label}; resume only the same "
                f"run (same model, recipe, calibration and config), or remove the state to start over"
            )
    return state
