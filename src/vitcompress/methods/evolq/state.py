"""Resumable Evol-Q state: written atomically after every block, checked against the run on resume.

The state holds the position (next pass, next block), every searched scale, the random generator's
state, the current fitness and the history, plus fingerprints of what the run depends on: the
model's weights, its recipe and PTQ quantization parameters, the config and the calibration images.
Resuming with any of them changed is an error naming it, never a silent restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress import runstate
from vitcompress.quant import Quantizer

STATE_VERSION = 1
_KINDS = {
    "weights": "model weights",
    "recipe": "quantization recipe",
    "ptq": "PTQ quantization parameters",
    "config": "Evol-Q config",
    "calib": "calibration images",
}


def fingerprints(model: nn.Module, recipe: dict, config: dict, calib: list[torch.Tensor]) -> dict[str, str]:
    """sha256 of each thing a run depends on (call before the search changes any scale)."""
    quant_buffers = [
        (f"{n}.{b}", t)
        for n, m in model.named_modules()
        if isinstance(m, Quantizer)
        for b, t in m.named_buffers(recurse=False)
    ]
    return {
        "weights": runstate.digest(model.named_parameters()),
        "recipe": runstate.dict_digest(recipe),
        "ptq": runstate.digest(quant_buffers),
        "config": runstate.dict_digest(config),
        "calib": runstate.digest((str(i), x) for i, x in enumerate(calib)),
    }


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a killed process leaves the previous state intact)."""
    runstate.save_state(path, state, STATE_VERSION)


def load_state(path: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Read a state and check its fingerprints against ``expected``; StateError naming what differs."""
    return runstate.load_state(path, expected, what="Evol-Q", version=STATE_VERSION, kinds=_KINDS)
