"""Checkpoint I/O that never unpickles user files: safetensors, or torch files with weights_only."""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from vitcompress.errors import CheckpointError, first_line
from vitcompress.io import atomic_path

# wrapper keys of training checkpoints (timm train.py, torchvision references, Lightning-style dicts), in
# the order they are tried: the trained weights before their EMA copy
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
# prefixes every key carries when a model was wrapped (DDP / DataParallel, torch.compile); stripped
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# checkpoint keys whose shape follows a create_model argument: named in the mismatch message
SHAPE_HINTS = {
    "pos_embed": "img_size or patch_size",
    "patch_embed.proj.weight": "in_chans or patch_size",
    "head.weight": "num_classes",
    "head.bias": "num_classes",
    "head.fc.weight": "num_classes",
    "head.fc.bias": "num_classes",
    "head_dist.weight": "num_classes",
    "head_dist.bias": "num_classes",
}


def load_error(e: BaseException) -> str:
    """One line saying why ``torch.load`` (weights only) or safetensors refused a file: a pickled object
    is named (torch's message about it spans many lines), anything else is its message's first line."""
    unsupported = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))  # weights_only refused an object
    if unsupported:
        return f"it holds Python objects a weights-only load refuses ({unsupported.group(0)}); save state_dict()"
    return first_line(e)


def _safe_globals():
    """Objects a training checkpoint commonly carries besides tensors that are safe to rebuild (timm's
    ``args`` namespace); everything else stays refused by ``weights_only=True``."""
    safe = getattr(torch.serialization, "safe_globals", None)
    return safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()


def _unwrap(obj: object) -> object:
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def strip_wrapper_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DDP) or ``_orig_mod.`` (torch.compile) prefix carried by every key."""
    for prefix in WRAPPER_PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``*.safetensors`` or a torch file (``weights_only=True``, never pickle).

    A training checkpoint's wrapper (``state_dict``, ``model``, ``model_state_dict``, then the EMA copies
    ``state_dict_ema``/``model_ema``) is opened, and a ``module.``/``_orig_mod.`` prefix is stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return strip_wrapper_prefix(load_file(str(path)))
        with _safe_globals():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, pickled objects, or not a checkpoint at all
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {load_error(e)}") from e
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path} does not hold a state dict of tensors (found {found}; "
            f"wrapper keys tried: {list(WRAPPER_KEYS)})"
        )
    return strip_wrapper_prefix(dict(obj))


def _listed(keys: list[str], describe: Callable[[str], str], n: int = 3) -> str:
    shown = ", ".join(describe(k) for k in keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def check_fits(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    where: str,
    describe: Callable[[str], str] = repr,
) -> None:
    """Raise one-line :class:`CheckpointError` if ``state`` does not fit ``model``'s state dict.

    The first key whose shape differs is named with both shapes; else the missing and unexpected keys;
    else the first tensor holding NaN or Inf (:func:`check_finite_state`). ``where`` names the file;
    ``describe`` names a key (e.g. with the name it had in the file).
    """
    expected = model.state_dict()
    for key, value in expected.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            hint = f" (check {SHAPE_HINTS[key]})" if key in SHAPE_HINTS else ""
            raise CheckpointError(
                f"{where} does not fit the model: key {describe(key)} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(value.shape)}{hint}"
            )
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    problems = [f"missing key{'s' if len(missing) > 1 else ''} {_listed(missing, describe)}"] if missing else []
    problems += [f"unexpected key{'s' if len(extra) > 1 else ''} {_listed(extra, describe)}"] if extra else []
    if problems:
        raise CheckpointError(f"{where} does not fit the model: {'; '.join(problems)}")
    check_finite_state(state, where, describe)


def check_finite_state(state: Mapping[str, torch.Tensor], where: str, describe: Callable[[str], str] = repr) -> None:
    """Raise one-line :class:`CheckpointError` naming the first floating-point tensor that holds NaN or Inf.

    Weights, biases and quantizer scales of a usable model are finite; a NaN in one of them makes every
    output NaN (or, for a single class's logit, a plausible-looking but wrong accuracy).
    """
    for key, value in state.items():
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise CheckpointError(
                f"{where}: tensor {describe(key)} holds {bad} NaN/Inf value{'s' if bad > 1 else ''} "
                f"(of {value.numel()}); the file is corrupt or the run that wrote it diverged"
            )


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into ``model`` strictly; a mis-shaped key is named with both shapes, missing and
    unexpected keys are named (one line, naming the file)."""
    state = read_state_dict(path)
    check_fits(model, state, f"checkpoint {path}")
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
