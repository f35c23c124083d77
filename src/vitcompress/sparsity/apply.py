"""``sparsify_``: fixed N:M masks on a model's GEMM layers, kept through fine-tuning, QAT and export.

Each sparsified layer gets a child module ``weight_sparsity`` (:class:`NMSparsity`) holding the
pattern and the boolean mask (a non-persistent buffer: checkpoints keep the plain weight layout and
the mask is recorded separately, see :func:`sparsity_plan`), plus a forward pre-hook that multiplies
the weight by the mask before every call. Masks never change after ``sparsify_``:

- the pre-hook zeroes pruned weights whatever an optimizer did to them;
- :func:`mask_gradients_` (called by the trainer after backward) zeroes their gradients, so AdamW's
  moments stay 0 there and gradient clipping sees only the kept weights.

The cost model reads ``weight_sparsity`` (duck-typed, :mod:`vitcompress.cost.bits`): storage with
metadata as in GPUSQ-ViT (:mod:`vitcompress.sparsity.masks`), BOPs of the kept MACs only.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

import torch
from torch import nn

from vitcompress.errors import ConfigError, StateError
from vitcompress.sparsity.masks import NMPattern, follows_pattern, gemm_view, get_pattern, nm_mask, storage_bits

log = logging.getLogger(__name__)

SPARSITY_ATTR = "weight_sparsity"
# the GEMMs GPUSQ-ViT (Yu et al., CVPR 2023) sparsifies: attention qkv/proj, MLP fc1/fc2, patch embedding
DEFAULT_LAYERS = ("*attn.qkv", "*attn.proj", "*mlp.fc1", "*mlp.fc2", "patch_embed.proj")
INDIVISIBLE_POLICIES = ("error", "skip")


class NMSparsity(nn.Module):
    """The fixed N:M mask of one layer's weight (child ``weight_sparsity`` of that layer)."""

    def __init__(self, pattern: NMPattern, mask: torch.Tensor):
        super().__init__()
        self.pattern = pattern
        self.register_buffer("mask", mask.to(torch.bool), persistent=False)

    def storage_bits(self, channel_bits: torch.Tensor, reduction: int) -> int:
        """Stored bits of the weight: kept values at their bits + index metadata (:meth:`NMPattern.chunk_bits`)."""
        return storage_bits(channel_bits, reduction, self.pattern)

    def kept_macs(self, macs_per_channel: int) -> int:
        """MACs per output channel a sparse GEMM executes (exact: the reduction is a multiple of m)."""
        return macs_per_channel * self.pattern.n // self.pattern.m

    def extra_repr(self) -> str:
        return f"pattern={self.pattern.name}, kept={int(self.mask.sum())}/{self.mask.numel()}"


def _apply_mask(module: nn.Module, args: tuple) -> None:
    # forward pre-hook: whatever happened to the weight since the last call, pruned entries are 0
    with torch.no_grad():
        module.weight.mul_(getattr(module, SPARSITY_ATTR).mask)


def attach_mask_(module: nn.Module, pattern: NMPattern, mask: torch.Tensor) -> None:
    """Give ``module`` a fixed mask: zero its pruned weights now and before every forward."""
    if mask.shape != module.weight.shape:
        raise ConfigError(f"mask shape {tuple(mask.shape)} does not fit weight {tuple(module.weight.shape)}")
    setattr(module, SPARSITY_ATTR, NMSparsity(pattern, mask.to(module.weight.device)))
    module.register_forward_pre_hook(_apply_mask)
    _apply_mask(module, ())


def _is_quantized(model: nn.Module) -> bool:
    return any(hasattr(m, "weight_quantizer") or type(m).__name__.endswith("Quantizer") for m in model.modules())


def select_layers(model: nn.Module, layers: Iterable[str] = DEFAULT_LAYERS) -> list[tuple[str, nn.Module]]:
    """The linear/conv modules whose names match one of the glob ``layers``; a glob matching none is an error."""
    candidates = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    chosen: dict[str, nn.Module] = {}
    for pattern in layers:
        hits = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"sparsity layer pattern {pattern!r} matches no linear/conv layer "
                f"(e.g. {[n for n, _ in candidates[:3]]})"
            )
        chosen.update(hits)
    return [(n, m) for n, m in candidates if n in chosen]


def sparsify_(
    model: nn.Module,
    pattern: str | NMPattern = "2:4",
    layers: Iterable[str] = DEFAULT_LAYERS,
    on_indivisible: str = "error",
) -> dict[str, str]:
    """Prune ``model`` in place to an N:M pattern with fixed magnitude masks.

    In every ``m`` consecutive weights along the reduction dimension of a row the ``n`` of largest
    magnitude are kept (pair-wise 4:8: the two pairs of largest magnitude), as in GPUSQ-ViT (Yu, Chen,
    Gan, Fan, CVPR 2023, arXiv:2305.10727).

    Args:
        model: a float model (sparsity comes before quantization).
        pattern: ``"2:4"`` (FP16/INT8) or ``"4:8"`` (pair-wise, INT4), or an :class:`NMPattern`.
        layers: globs over module names; default: every ``qkv``, ``proj``, ``fc1``, ``fc2`` and the
            patch embedding conv (as a GEMM with reduction C·P²).
        on_indivisible: ``"error"`` (default) or ``"skip"`` (logged, left dense) for a layer whose
            reduction dimension is not a multiple of ``m``.

    Returns:
        The plan: layer name -> pattern name (skipped layers are absent).

    Raises:
        StateError: the model is quantized or already sparse.
        ConfigError: a layer's reduction dimension is not a multiple of ``m`` (named), or a layer glob
            matches nothing.
    """
    nm = get_pattern(pattern)
    if on_indivisible not in INDIVISIBLE_POLICIES:
        raise ConfigError(f"on_indivisible must be one of {list(INDIVISIBLE_POLICIES)}, got {on_indivisible!r}")
    if _is_quantized(model):
        raise StateError("model is already quantized: sparsify the float model first (sparsify_ before quantize_)")
    if sparsity_plan(model):
        raise StateError("model is already sparse: sparsify_ a dense model")
    plan: dict[str, str] = {}
    for name, module in select_layers(model, layers):
        reduction = gemm_view(module.weight).shape[1]
        if reduction % nm.m:
            message = f"layer {name}: reduction dimension {reduction} is not a multiple of {nm.m} ({nm.name})"
            if on_indivisible == "error":
                raise ConfigError(message + "; pass on_indivisible='skip' to leave it dense")
            log.warning("%s: left dense", message)
            continue
        attach_mask_(module, nm, nm_mask(module.weight, nm))
        plan[name] = nm.name
    log.info("sparsified %d layers to %s", len(plan), nm.name)
    return plan


def sparse_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every layer carrying a mask."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, SPARSITY_ATTR, None), NMSparsity)]


def sparsity_plan(model: nn.Module) -> dict[str, str]:
    """Layer name -> pattern name of every masked layer (what ``sparsity.json`` records)."""
    return {n: getattr(m, SPARSITY_ATTR).pattern.name for n, m in sparse_layers(model)}


def masks_of(model: nn.Module) -> dict[str, tuple[NMPattern, torch.Tensor]]:
    """Layer name -> (pattern, mask) of every masked layer (to carry masks across module replacement)."""
    return {
        n: (getattr(m, SPARSITY_ATTR).pattern, getattr(m, SPARSITY_ATTR).mask.clone()) for n, m in sparse_layers(model)
    }


def attach_masks_(model: nn.Module, masks: dict[str, tuple[NMPattern, torch.Tensor]]) -> None:
    """Re-attach masks by layer name (after quantization replaced the layers); a missing layer is an error."""
    for name, (pattern, mask) in masks.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"sparse layer {name} does not exist in this model") from None
        if not isinstance(getattr(module, SPARSITY_ATTR, None), NMSparsity):
            attach_mask_(module, pattern, mask)


def masks_from_weights_(model: nn.Module, plan: dict[str, str]) -> None:
    """Rebuild masks from a saved plan and the (already sparse) weights: the non-zeros are the kept entries.

    Raises:
        StateError: a layer's weight does not follow its pattern (it was not saved sparse).
    """
    for name, pattern_name in plan.items():
        module = model.get_submodule(name)
        nm = get_pattern(pattern_name)
        if not follows_pattern(module.weight, nm):
            raise StateError(f"layer {name}: weight does not follow the {nm.name} pattern")
        attach_mask_(module, nm, nm_mask(module.weight, nm))


@torch.no_grad()
def mask_gradients_(model: nn.Module) -> None:
    """Zero the gradients of pruned weights (after backward, before clipping and the optimizer step)."""
    for _, module in sparse_layers(model):
        if module.weight.grad is not None:
            module.weight.grad.mul_(getattr(module, SPARSITY_ATTR).mask)


def check_sparsity(model: nn.Module) -> dict[str, bool]:
    """Layer name -> whether its weight follows its pattern now (the weight itself, not the mask)."""
    return {n: follows_pattern(m.weight, getattr(m, SPARSITY_ATTR).pattern) for n, m in sparse_layers(model)}
