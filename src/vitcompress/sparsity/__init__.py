"""N:M structured sparsity: masks, ``sparsify_``, storage accounting.

The patterns and their storage cost are those of GPUSQ-ViT (Yu, Chen, Gan, Fan, "Boost Vision
Transformer with GPU-Friendly Sparsity and Quantization", CVPR 2023, arXiv:2305.10727): 2:4 for FP16
and INT8, pair-wise 4:8 for INT4.
"""

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
    "DEFAULT_LAYERS",
    "NMPattern",
    "NMSparsity",
    "PATTERNS",
    "attach_masks_",
    "check_sparsity",
    "follows_pattern",
    "get_pattern",
    "mask_gradients_",
    "masks_from_weights_",
    "masks_of",
    "nm_mask",
    "sparse_layers",
    "sparsify_",
    "sparsity_plan",
    "storage_bits",
]
