"""Frozen, validated configuration: ``QuantSpec`` (one quantization point) and ``Recipe`` (a model).

Every value is checked in ``__post_init__``; a bad one raises :class:`ConfigError` naming the field
and the allowed values. Both serialise to plain dicts (YAML/JSON) with a ``type`` tag and a
``version``; unknown keys are rejected.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from vitcompress.errors import ConfigError

ALLOWED_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
SCHEMES = ("symmetric", "asymmetric", "log2", "ptf")
GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "omse", "mse")
ROLES = ("weight", "act", "qkv", "probs", "norm")  # what a quantization point quantizes


def _check(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    Attributes:
        bits: 2..8 or 16; 32 means "not quantized".
        scheme: ``symmetric`` (signed, z = 0), ``asymmetric`` (unsigned with zero point),
            ``log2`` (attention probabilities in [0, 1]) or ``ptf`` (power-of-two factor, LayerNorm inputs).
        granularity: ``tensor``; ``channel`` (per output channel, weights); ``group`` (``group_size``
            consecutive output channels share a scale and a bit width); ``token`` (dynamic per token).
        group_size: channels per group, for ``granularity="group"``.
        observer: range estimation: ``minmax``, ``percentile``, ``omse`` (shrink the range by 1 % steps,
            keep the least MSE) or ``mse`` (finer search of the clipping range by least MSE).
        percentile: for ``observer="percentile"``, in (50, 100].
        learnable: LSQ-style learnable scale, for QAT.
    """

    bits: int = 8
    scheme: str = "symmetric"
    granularity: str = "tensor"
    group_size: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    learnable: bool = False

    def __post_init__(self) -> None:
        _check("bits", self.bits, ALLOWED_BITS)
        _check("scheme", self.scheme, SCHEMES)
        _check("granularity", self.granularity, GRANULARITIES)
        _check("observer", self.observer, OBSERVERS)
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 1:
                raise ConfigError(f"group_size must be a positive integer for granularity 'group', "
                                  f"got {self.group_size!r}")
        elif self.group_size is not None:
            raise ConfigError(f"group_size is only allowed with granularity 'group', got {self.group_size!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile!r}")
        if self.scheme in ("log2", "ptf") and self.granularity != "tensor":
            raise ConfigError(f"granularity must be 'tensor' for scheme {self.scheme!r}, got {self.granularity!r}")

    @property
    def enabled(self) -> bool:
        return self.bits < 32

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "QuantSpec") -> QuantSpec:
        _reject_unknown(d, cls, where)
        return cls(**d)


def _reject_unknown(d: dict, cls: type, where: str, extra: tuple = ()) -> None:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    known = {f.name for f in fields(cls)} | set(extra)
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {sorted(known)}")
