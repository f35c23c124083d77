"""Typed errors. Every user-facing failure is one of these, with a one-line message that names
the offending field, file or layer and (where it applies) the allowed values."""

from __future__ import annotations


class VitCompressError(Exception):
    """Base class of every error vitcompress raises on purpose."""


class ConfigError(VitCompressError, ValueError):
    """A configuration field has a value outside its allowed set."""


class DataError(VitCompressError):
    """Data is missing, malformed, empty or does not fit the model."""


class CheckpointError(VitCompressError):
    """A checkpoint file is missing, corrupt, or does not fit the architecture."""


class UnsupportedModelError(VitCompressError):
    """A model (or some of its layers) is not known to the toolkit."""


class StateError(VitCompressError):
    """An operation was called in the wrong order (e.g. refining a model that was never quantized)."""


def first_line(error: BaseException | str) -> str:
    """The first non-empty line of a (third-party) error message, for embedding in one of ours.

    torch, PIL and ONNX often raise multi-line messages (a summary, then details or a traceback); ours
    stay one line. An empty message gives the exception's type name.
    """
    text = str(error)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if isinstance(error, BaseException) else ""
