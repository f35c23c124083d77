"""The checks every frozen config runs in ``__post_init__``: one line naming the field and what it allows.

They raise :class:`~vitcompress.errors.ConfigError` (a ``ValueError``), never ``assert``: asserts vanish
under ``python -O``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from vitcompress.errors import ConfigError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def one_of(field: str, value: Any, allowed: Iterable[Any]) -> None:
    """``value`` must be one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{field} must be one of {allowed}, got {value!r}")


def integer(
    field: str, value: Any, minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> None:
    """``value`` must be an integer in ``[minimum, maximum]`` (``None`` too when ``optional``)."""
    if optional and value is None:
        return
    if not _is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = " and ".join(
            s
            for s in (f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else "")
            if s
        )
        raise ConfigError(f"{field} must be an integer{' ' + bounds if bounds else ''}, got {value!r}")


def positive_int(field: str, value: Any, optional: bool = False) -> None:
    """``value`` must be an integer >= 1."""
    integer(field, value, minimum=1, optional=optional)


def number(
    field: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    optional: bool = False,
) -> None:
    """``value`` must be a finite number in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"<= {high:g}"
        bounds = " and ".join(s for s in (lo, hi) if s)
        raise ConfigError(f"{field} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")


def positive(field: str, value: Any, optional: bool = False) -> None:
    """``value`` must be a finite number > 0."""
    number(field, value, low=0, low_open=True, optional=optional)


def version(cls_name: str, value: Any, supported: Iterable[int] = (1,)) -> None:
    """A config's format ``version`` must be one this code reads."""
    if value not in tuple(supported):
        raise ConfigError(f"{cls_name}.version must be one of {list(supported)}, got {value!r}")


def known_keys(where: str, data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """A mapping read from a file must not carry keys the config does not have."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    allowed = sorted(set(allowed))
    unknown = sorted(set(data) - set(allowed), key=str)
    if unknown:
        raise ConfigError(f"{where} has unknown key {unknown[0]!r}; allowed keys: {allowed}")
