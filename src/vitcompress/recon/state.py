"""Resumable reconstruction state: written atomically after every finished unit, checked on resume.

The state holds the index of the next unit, the tensors reconstruction has changed so far (the baked
weights and learned step sizes, by ``state_dict`` key), the per-unit history, and fingerprints of what the
run depends on: the PTQ model (weights and quantizer buffers, before reconstruction), the recipe and the
calibration images. Resuming with any of them changed is an error naming it, never a silent restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitcompress import runstate

STATE_FILE = "recon_state.pt"
STATE_VERSION = 1
_KINDS = {"model": "PTQ model (weights and quantizer parameters)", "recipe": "recipe", "calib": "calibration images"}


def fingerprints(model: nn.Module, recipe: dict, images: torch.Tensor) -> dict[str, str]:
    """sha256 of the PTQ model, the recipe and the calibration images (call before reconstruction starts)."""
    return {
        "model": runstate.digest(model.state_dict().items()),
        "recipe": runstate.dict_digest(recipe),
        "calib": runstate.digest([("images", images)]),
    }


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the previous state intact)."""
    runstate.save_state(path, state, STATE_VERSION)


def load_state(path: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Read a state and check its fingerprints against ``expected``; StateError naming what differs."""
    return runstate.load_state(path, expected, what="reconstruction", version=STATE_VERSION, kinds=_KINDS)
