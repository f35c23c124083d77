"""F-LBQ bit allocation: a weight bit width per backbone layer or channel group under a bit budget.

After "F-LBQ: Fine-grained Low Bit Quantization for Efficient and Accurate Object Detection" (2025),
applied here to the backbones of ViT/DeiT/Swin classifiers (docs/bitalloc.md).

- :class:`FLBQConfig` selects the method in :func:`vitcompress.compress_` (handler in
  :mod:`~vitcompress.methods.flbq.step`: curves, both solvers, plan -> recipe, PTQ, report).
- :func:`allocate_bits` (model, calibration images, config -> :class:`BitPlan`) and
  :func:`plan_to_recipe` are the building blocks.
- The solvers work on distortion curves alone (no model): :class:`Curves` holds ``D_u(b)`` and the
  size ``n_u`` of every unit; :func:`solve` runs :func:`dp_allocate` (F-LBQ-DP) or
  :func:`lagrangian_allocate` (F-LBQ-LG).
"""

from vitcompress.methods.flbq import step as _step  # noqa: F401  (registers the compress_ handler)
from vitcompress.methods.flbq.allocate import allocate_bits
from vitcompress.methods.flbq.apply import base_recipe, layer_bits, plan_to_recipe
from vitcompress.methods.flbq.config import FLBQConfig
from vitcompress.methods.flbq.curves import Curves, UnitCurve
from vitcompress.methods.flbq.measure import measure_curves, weight_only_distortion
from vitcompress.methods.flbq.solvers import (
    SOLVERS,
    BitPlan,
    capacity_bits,
    dp_allocate,
    lagrangian_allocate,
    min_bits_from_margin,
    solve,
)

__all__ = [
    "SOLVERS",
    "BitPlan",
    "Curves",
    "FLBQConfig",
    "UnitCurve",
    "allocate_bits",
    "base_recipe",
    "capacity_bits",
    "dp_allocate",
    "lagrangian_allocate",
    "layer_bits",
    "measure_curves",
    "min_bits_from_margin",
    "plan_to_recipe",
    "solve",
    "weight_only_distortion",
]
