"""Checkpoint I/O that never unpickles user files: safetensors, or torch files with weights_only."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vitcompress.errors import CheckpointError
from vitcompress.io import atomic_path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``*.safetensors`` or a torch file (``weights_only=True``, never pickle)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a checkpoint at all
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {first_line}") from e
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    return obj


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` strictly; a missing, extra or mis-shaped key names the file and key."""
    state = read_state_dict(path)
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise CheckpointError(f"checkpoint {path} does not fit the model: missing key {key!r}")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {path} does not fit the model: key {key!r} has shape "
                f"{tuple(state[key].shape)}, the model expects {tuple(value.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise CheckpointError(f"checkpoint {path} does not fit the model: unexpected key {extra[0]!r}")
    model.load_state_dict(state, strict=True)
    return model


def save_weights(
    model_or_state: nn.Module | dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file atomically (shared tensors are cloned, tensors made contiguous)."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
