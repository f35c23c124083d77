"""Equivalent activation bits of a window-level compression (or pruning) configuration
(MixA-Q supplementary material, §6.2, eq. 3–5).

MixA-Q runs a fraction ``r_i`` of the windows of block pair i at the low activation bit width, which
the paper counts as saving 50 % of their computation; SparseViT prunes them, saving 100 %. The
computation-weighted average bit width is then

    ActBit_eq = ActBit_base × (Σ_i ratio_i·G_i + C) / (Σ_i G_i + C)                  (eq. 5)

with ``ratio_i = 1 − r_i/2`` for MixA-Q (eq. 3) and ``ratio_i = 1 − r_i`` for SparseViT (eq. 4),
``G_i`` the GMACs of group i and ``C`` the GMACs nothing can save (patch merging / downsampling).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from vitcompress.errors import ConfigError

log = logging.getLogger(__name__)

# Fraction of a selected window's computation that each method saves (MixA-Q supplementary §6.2, eq. 3–4).
METHOD_SAVING: dict[str, float] = {"mixaq": 0.5, "sparsevit": 1.0}

# MixA-Q supplementary §6.2, eq. 1–2: GMACs of Swin-T's six block pairs and of its downsampling layers.
SWIN_T_GMACS: tuple[float, ...] = (13.3, 13.56, 14.16, 14.16, 14.16, 14.02)
SWIN_T_C: float = 3.0


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name}: must be a finite number, got {value!r}")
    return float(value)


def relative_cost(gmacs: Sequence[float], c: float, ratios: Sequence[float], method: str = "mixaq") -> float:
    """The fraction of the computation left, ``(Σ ratio_i·G_i + C) / (Σ G_i + C)`` (MixA-Q supplementary eq. 3–5).

    Args:
        gmacs: GMACs ``G_i`` of each ratio group (:func:`~vitcompress.methods.mixaq.ratio_groups`).
        c: GMACs that no ratio can save (downsampling layers), >= 0.
        ratios: Compression (MixA-Q) or pruning (SparseViT) ratio ``r_i`` of each group, in ``[0, 1]``.
        method: ``"mixaq"`` (eq. 3) or ``"sparsevit"`` (eq. 4).

    Returns:
        The relative cost in ``[C/(ΣG+C), 1]``.

    Raises:
        ConfigError: Lengths differ, a value is out of range or the method is unknown (names the field).
    """
    if method not in METHOD_SAVING:
        raise ConfigError(f"method: must be one of {sorted(METHOD_SAVING)}, got {method!r}")
    if len(gmacs) == 0:
        raise ConfigError("gmacs: must hold at least one value")
    if len(ratios) != len(gmacs):
        raise ConfigError(f"ratios: length {len(ratios)} differs from gmacs length {len(gmacs)}")
    g = [_finite(f"gmacs[{i}]", x) for i, x in enumerate(gmacs)]
    r = [_finite(f"ratios[{i}]", x) for i, x in enumerate(ratios)]
    c = _finite("c", c)
    if any(x < 0 for x in g):
        raise ConfigError(f"gmacs: must all be >= 0, got {list(gmacs)}")
    if c < 0:
        raise ConfigError(f"c: must be >= 0, got {c:g}")
    bad = [i for i, x in enumerate(r) if not 0 <= x <= 1]
    if bad:
        raise ConfigError(f"ratios[{bad[0]}]: must be in [0, 1], got {r[bad[0]]:g}")
    total = sum(g) + c
    if total <= 0:
        raise ConfigError("gmacs: sum(gmacs) + c must be > 0")
    saving = METHOD_SAVING[method]
    kept = sum((1 - saving * ri) * gi for ri, gi in zip(r, g, strict=True))  # eq. 3 / eq. 4
    return (kept + c) / total  # eq. 5 without ActBit_base


def equivalent_bits(
    gmacs: Sequence[float], c: float, ratios: Sequence[float], base_bits: float, method: str = "mixaq"
) -> float:
    """Equivalent activation bits ``ActBit_eq`` (MixA-Q supplementary eq. 5).

    Example (the paper's Swin-T costs, every pair half compressed, 4-bit base):
    ``equivalent_bits(SWIN_T_GMACS, SWIN_T_C, [0.5] * 6, 4)`` is
    ``4 × (0.75·83.36 + 3) / 86.36 ≈ 3.0347``.

    Args:
        gmacs: GMACs ``G_i`` of each ratio group.
        c: GMACs that no ratio can save, >= 0.
        ratios: Ratio ``r_i`` of each group, in ``[0, 1]``.
        base_bits: Activation bit width of the baseline model, > 0.
        method: ``"mixaq"`` (compressed windows save 50 %, eq. 3) or ``"sparsevit"`` (pruned windows
            save 100 %, eq. 4).

    Returns:
        The computation-weighted activation bit width.

    Raises:
        ConfigError: As :func:`relative_cost`, or ``base_bits`` is not > 0.
    """
    base = _finite("base_bits", base_bits)
    if base <= 0:
        raise ConfigError(f"base_bits: must be > 0, got {base:g}")
    return base * relative_cost(gmacs, c, ratios, method)
