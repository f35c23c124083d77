"""N:M structured sparsity (GPUSQ-ViT, METHODS §3.1): masks, ``sparsify_``, storage accounting."""

from vitcompress.sparsity.apply import (
    DEFAULT_LAYERS,
    NMSparsity,
    attach_masks_,
    check_sparsity,
    mask_gradients_,
    masks_from_weights_,
    masks_of,
    sparse_layers,
    sparsify_,
    sparsity_plan,
)
from vitcompress.sparsity.masks import PATTERNS, NMPattern, follows_pattern, get_pattern, nm_mask, storage_bits

__all__ = [
    "DEFAULT_LAYERS", "NMPattern", "NMSparsity", "PATTERNS", "attach_masks_", "check_sparsity", "follows_pattern",
    "get_pattern", "mask_gradients_", "masks_from_weights_", "masks_of", "nm_mask", "sparse_layers", "sparsify_",
    "sparsity_plan", "storage_bits",
]
