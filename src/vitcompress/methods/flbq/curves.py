"""Distortion curves of F-LBQ: for every unit u, ``D_u(b)`` at each candidate bit width.

A unit is a whole layer's weight or a group of output channels of it; ``size`` is its number of
weights ``n_u``, so its rate at ``b`` bits is ``b·n_u``. The solvers assume additivity (total
distortion ≈ Σ_u D_u(b_u), as the F-LBQ paper does), so the curves are all they need.

JSON format (exactly; unknown keys are rejected)::

    {"units": [{"name": "blocks.0.attn.qkv.g0", "size": 3072, "bits": [2, 3, 4],
                "distortion": [0.12, 0.031, 0.008]}, ...]}

A ``.npz`` form (:meth:`Curves.save_npz` / :meth:`Curves.load_npz`) holds the same data as padded
arrays, which loads much faster for tens of thousands of units.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitcompress.errors import ConfigError, DataError
from vitcompress.io import atomic_path, write_json

_UNIT_KEYS = ("name", "size", "bits", "distortion")


def _is_int(x: Any) -> bool:
    # bool is an int subclass; True as a size or bit width is always a mistake.
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_list(x: Any) -> bool:
    return isinstance(x, Sequence | np.ndarray) and not isinstance(x, str | bytes)


def _check_lists(where: str, bits: Any, distortion: Any) -> tuple[list, list]:
    """``bits`` (distinct integers >= 1) and ``distortion`` (finite numbers) of equal, non-zero length."""
    if not _is_list(bits):
        raise ConfigError(f"{where}: bits must be a list of integers, got {bits!r}")
    if not _is_list(distortion):
        raise ConfigError(f"{where}: distortion must be a list of numbers, got {distortion!r}")
    bits, dist = list(bits), list(distortion)
    if not bits:
        raise ConfigError(f"{where}: bits must not be empty")
    if len(bits) != len(dist):
        raise ConfigError(
            f"{where}: bits and distortion must have the same length, "
            f"got {len(bits)} bits and {len(dist)} distortion values"
        )
    for b in bits:
        if not _is_int(b) or b < 1:
            raise ConfigError(f"{where}: bits must be integers >= 1, got {b!r}")
    if len(set(bits)) != len(bits):
        dup = sorted({b for b in bits if bits.count(b) > 1})
        raise ConfigError(f"{where}: bits must be distinct, got duplicates {dup}")
    for b, d in zip(bits, dist, strict=True):
        if not isinstance(d, numbers.Real) or isinstance(d, bool) or not math.isfinite(d):
            raise ConfigError(f"{where}: distortion at {b} bits must be finite, got {d!r}")
    return bits, dist


def _check_monotone(where: str, bits: list, dist: list, order: list[int]) -> None:
    """More bits never add distortion (the solvers rely on it)."""
    for lo, hi in zip(order, order[1:]):
        if dist[hi] > dist[lo]:
            raise ConfigError(
                f"{where}: distortion must not increase with bits, got {dist[hi]!r} at {bits[hi]} bits "
                f"> {dist[lo]!r} at {bits[lo]} bits"
            )


@dataclass(frozen=True)
class UnitCurve:
    """The distortion curve of one unit.

    Attributes:
        name: unique unit name (e.g. ``blocks.3.mlp.fc1`` or ``blocks.3.mlp.fc1.g7`` for a channel group).
        size: number of weights ``n_u`` (>= 1).
        bits: candidate bit widths (distinct integers >= 1); stored sorted ascending.
        distortion: ``D_u(b)`` for each entry of ``bits`` (finite, non-increasing in ``b``; measured
            curves are made monotone by :func:`~vitcompress.methods.flbq.measure.measure_curves`),
            reordered with ``bits``.
    """

    name: str
    size: int
    bits: tuple[int, ...]
    distortion: tuple[float, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"unit {self.name!r}: name must be a non-empty string")
        where = f"unit {self.name!r}"
        if not _is_int(self.size) or self.size < 1:
            raise ConfigError(f"{where}: size must be an integer >= 1, got {self.size!r}")
        bits, dist = _check_lists(where, self.bits, self.distortion)
        order = sorted(range(len(bits)), key=bits.__getitem__)
        _check_monotone(where, bits, dist, order)
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "bits", tuple(int(bits[i]) for i in order))
        object.__setattr__(self, "distortion", tuple(float(dist[i]) for i in order))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this unit."""
        return {
            "name": self.name,
            "size": self.size,
            "bits": list(self.bits),
            "distortion": list(self.distortion),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UnitCurve:
        """Build a unit from its JSON form; every key is required and no other is allowed."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"curves: each unit must be an object with keys {list(_UNIT_KEYS)}, got {d!r}")
        name = d.get("name", "?")
        unknown = sorted(set(d) - set(_UNIT_KEYS))
        if unknown:
            raise ConfigError(f"unit {name!r}: unknown keys {unknown}; allowed: {list(_UNIT_KEYS)}")
        missing = [k for k in _UNIT_KEYS if k not in d]
        if missing:
            raise ConfigError(f"unit {name!r}: missing keys {missing}")
        return cls(name=d["name"], size=d["size"], bits=d["bits"], distortion=d["distortion"])


@dataclass(frozen=True)
class Curves:
    """The distortion curves of all units of a model (the input of every F-LBQ solver).

    Attributes:
        units: the units, in model order (names unique, at least one unit).
    """

    units: tuple[UnitCurve, ...]

    def __post_init__(self) -> None:
        units = tuple(self.units)
        if not units:
            raise ConfigError("curves: units must not be empty")
        seen: set[str] = set()
        for u in units:
            if not isinstance(u, UnitCurve):
                raise ConfigError(f"curves: units must be UnitCurve instances, got {type(u).__name__}")
            if u.name in seen:
                raise ConfigError(f"curves: duplicate unit name {u.name!r}")
            seen.add(u.name)
        object.__setattr__(self, "units", units)

    def __len__(self) -> int:
        return len(self.units)

    @property
    def names(self) -> tuple[str, ...]:
        """Unit names in order."""
        return tuple(u.name for u in self.units)

    @property
    def total_size(self) -> int:
        """Σ n_u, the number of weights the average bit width is taken over."""
        return sum(u.size for u in self.units)

    # ---------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``{"units": [...]}``."""
        return {"units": [u.to_dict() for u in self.units]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Curves:
        """Build curves from ``{"units": [...]}``; unknown keys are rejected."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"curves: expected an object with key 'units', got {type(d).__name__}")
        unknown = sorted(set(d) - {"units"})
        if unknown:
            raise ConfigError(f"curves: unknown keys {unknown}; allowed: ['units']")
        if "units" not in d or not isinstance(d["units"], list):
            raise ConfigError("curves: 'units' must be a list of unit objects")
        return cls(tuple(UnitCurve.from_dict(u) for u in d["units"]))

    @classmethod
    def from_json(cls, path_or_dict: str | Path | Mapping[str, Any]) -> Curves:
        """Load curves from a JSON file, or build them from an already parsed dict.

        Raises:
            DataError: the file is missing or is not valid JSON.
            ConfigError: the content does not follow the format (names the unit and field).
        """
        if isinstance(path_or_dict, Mapping):
            return cls.from_dict(path_or_dict)
        path = Path(path_or_dict)
        if not path.is_file():
            raise DataError(f"curves file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"curves file {path} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def to_json(self, path: str | Path) -> None:
        """Write the JSON form atomically (a killed process never leaves half a file)."""
        write_json(path, self.to_dict())

    # ---------------------------------------------------------------- npz
    def save_npz(self, path: str | Path) -> None:
        """Write padded arrays atomically: ``names`` (U,), ``sizes`` (U,), ``bits`` (U, K) padded with
        0 and ``distortion`` (U, K) padded with NaN, K the largest number of choices of any unit."""
        k = max(len(u.bits) for u in self.units)
        bits = np.zeros((len(self), k), dtype=np.int64)
        dist = np.full((len(self), k), np.nan)
        for i, u in enumerate(self.units):
            bits[i, : len(u.bits)] = u.bits
            dist[i, : len(u.bits)] = u.distortion
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(
                f,
                names=np.array(self.names, dtype=str),
                sizes=np.array([u.size for u in self.units], dtype=np.int64),
                bits=bits,
                distortion=dist,
            )

    @classmethod
    def load_npz(cls, path: str | Path) -> Curves:
        """Load curves written by :meth:`save_npz`."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"curves file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                names, sizes, bits, dist = z["names"], z["sizes"], z["bits"], z["distortion"]
        except (OSError, ValueError, KeyError) as e:
            raise DataError(f"curves file {path} is not a curves .npz: {e}") from e
        units = []
        for i, name in enumerate(names.tolist()):
            keep = bits[i] > 0  # padding is bits == 0 (real bit widths are >= 1)
            units.append(
                UnitCurve(
                    name=name,
                    size=int(sizes[i]),
                    bits=tuple(bits[i][keep].tolist()),
                    distortion=tuple(dist[i][keep].tolist()),
                )
            )
        return cls(tuple(units))
