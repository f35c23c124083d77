"""Resumable reconstruction state: written atomically after every finished unit, checked on resume.

The state holds the index of the next unit, the tensors reconstruction has changed so far (the baked
weights and learned step sizes, by ``state_dict`` key), the per-unit history, and fingerprints of what the
run depends on: the PTQ model (weights and quantizer buffers, before reconstruction), the recipe and the
calibration images. Resuming with any of them changed is an error naming it, never a silent restart.
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

STATE_FILE = "recon_state.pt"
STATE_VERSION = 1
_KINDS = {"model": "PTQ model (weights and quantizer parameters)", "recipe": "recipe", "calib": "calibration images"}


def _digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def fingerprints(model: nn.Module, recipe: dict, images: torch.Tensor) -> dict[str, str]:
    """sha256 of the PTQ model, the recipe and the calibration images (call before reconstruction starts)."""
    return {
        "model": _digest(model.state_dict().items()),
        "recipe": hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest(),
        "calib": _digest([("images", images)]),
    }


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a kill leaves the previous state intact)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": STATE_VERSION, **state}, tmp)


def load_state(path: Path, expected: dict[str, str]) -> dict[str, Any]:
    """Read a state and check its fingerprints against ``expected``; StateError naming what differs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or corrupt file: one line naming it
        raise StateError(f"cannot read reconstruction state {path}: {load_error(e)}; remove it to start over") from None
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION or "fingerprints" not in state:
        raise StateError(f"{path} is not a reconstruction state (version {STATE_VERSION}); remove it to start over")
    for key, label in _KINDS.items():
        if state["fingerprints"].get(key) != expected[key]:
            raise StateError(
                f"reconstruction state {path} was written for a different {label}; resume only the same run "
                f"(same model, recipe and calibration images), or remove the state to start over"
            )
    return state
