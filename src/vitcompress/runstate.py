"""Resumable run state files: fingerprinted, written atomically, checked on resume.

A long search or reconstruction writes its state after every finished unit of work. The state carries
sha256 fingerprints of what the run depends on (weights, recipe, config, calibration images); resuming
with any of them changed is a :class:`StateError` naming it, never a silent restart. Files are read with
``torch.load(weights_only=True)``: a file holding Python objects is refused, not unpickled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from vitcompress.errors import StateError
from vitcompress.io import atomic_path
from vitcompress.models.checkpoint import load_error


def digest(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, shape, bytes) of each named tensor, in order."""
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def dict_digest(values: Mapping[str, Any]) -> str:
    """sha256 of a config or recipe dict (keys sorted)."""
    return hashlib.sha256(repr(sorted(values.items())).encode()).hexdigest()


def save_state(path: Path, state: Mapping[str, Any], version: int) -> None:
    """Write ``state`` (with ``version``) to ``path`` atomically: a kill leaves the previous state intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"version": version, **state}, tmp)


def load_state(path: Path, expected: Mapping[str, str], *, what: str, version: int, kinds: Mapping[str, str]):
    """Read the ``what`` state at ``path`` and check each fingerprint of ``kinds`` (key -> label) against
    ``expected``.

    Raises:
        StateError: one line naming the file: unreadable, not such a state, or written for a different
            (label) than this run's.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or corrupt file: say which file (torch's message spans many lines)
        raise StateError(f"cannot read {what} state {path}: {load_error(e)}; remove it to start over") from None
    if not isinstance(state, dict) or state.get("version") != version or "fingerprints" not in state:
        raise StateError(f"{path} is not a{'n' if what[0] in 'AEIOU' else ''} {what} state (version {version})")
    for key, label in kinds.items():
        if state["fingerprints"].get(key) != expected[key]:
            raise StateError(
                f"{what} state {path} was written for different {label}; resume only the same run, or remove "
                "the state to start over"
            )
    return state
