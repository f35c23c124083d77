"""Post-training quantization with a :class:`~vitcompress.config.Recipe` as a method of ``compress_``."""

from __future__ import annotations

import time
from dataclasses import dataclass

from torch import nn

from vitcompress.config import Recipe, resolve_recipe
from vitcompress.methods.registry import register
from vitcompress.options import MethodCommand, option
from vitcompress.quantize import RECON_ATTR, quantize_
from vitcompress.result import Result


@register(Recipe, "ptq", calib_size=1000)
def ptq(
    model: nn.Module, recipe: Recipe, calib, *, train_data=None, eval_data=None, state_dir=None, resume: bool = False
) -> Result:
    """Quantize ``model`` in place with ``recipe`` on ``calib`` (see :func:`~vitcompress.quantize.quantize_`);
    block reconstruction keeps its resumable state in ``state_dir``."""
    t0 = time.perf_counter()
    quantize_(model, recipe, calib, state_dir=state_dir, resume=resume)
    metrics = {"ptq_seconds": time.perf_counter() - t0}
    if recipe.reconstruction is not None:
        metrics["reconstruction"] = getattr(model, RECON_ATTR)
    return Result(model, "ptq", recipe, metrics=metrics)


@dataclass(frozen=True)
class PTQOptions:
    """``vitcompress compress ptq``.

    Attributes:
        recipe: preset name (w8a8, fqvit-w4a8, ...; see the README) or a YAML/JSON recipe file
    """

    recipe: Recipe = option(parse=resolve_recipe)


COMMAND = MethodCommand(
    name="ptq",
    help="post-training quantization with a recipe (preset or YAML/JSON file)",
    options=PTQOptions,
    build=lambda opts, shared: opts.recipe,
)
