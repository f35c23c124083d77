"""N:M structured sparsity patterns: mask computation, checking and storage.

Patterns and storage per chunk follow GPUSQ-ViT (Yu, Chen, Gan, Fan, "Boost Vision Transformer with
GPU-Friendly Sparsity and Quantization", CVPR 2023, arXiv:2305.10727; appendix §2.1): kept values
at their bit width plus a ``log2(m)``-bit index per kept value (per kept pair for 4:8). FP16 2:4:
64 dense bits vs 2×16 + 2×2 = 36; INT8 2:4: 32 vs 2×8 + 2×2 = 20; INT4 4:8: 32 vs 4×4 + 2×2 = 20.

A pattern keeps ``n`` of every ``m`` consecutive weights along the reduction (input) dimension of
each row of the GEMM. ``block`` > 1 makes it pair-wise: the ``m``-wide chunk is split into
``block``-wide sub-chunks that are all zero or all kept (INT4 4:8 on sparse tensor cores).

Weights are viewed as the GEMM's ``(out, reduction)`` matrix: a linear's ``(out, in)``, a conv's
``(out, C·kh·kw)`` in PyTorch's memory order (patch embedding: reduction C·P²).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vitcompress.errors import ConfigError


@dataclass(frozen=True)
class NMPattern:
    """Keep ``n`` of every ``m`` weights, in sub-chunks of ``block`` (1 = element-wise).

    Attributes:
        n: kept weights per chunk.
        m: chunk width along the reduction dimension.
        block: sub-chunk width; kept/pruned as a unit (2 for the INT4 4:8 pair-wise pattern).
    """

    n: int
    m: int
    block: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.m, int) and isinstance(self.n, int) and isinstance(self.block, int)):
            raise ConfigError(f"pattern n, m, block must be integers, got {self.n!r}, {self.m!r}, {self.block!r}")
        if not 0 < self.n < self.m:
            raise ConfigError(f"pattern needs 0 < n < m, got n={self.n}, m={self.m}")
        if self.block < 1 or self.m % self.block or self.n % self.block:
            raise ConfigError(f"pattern block {self.block} must divide n={self.n} and m={self.m}")

    @property
    def name(self) -> str:
        return f"{self.n}:{self.m}" + ("" if self.block == 1 else f"/{self.block}")

    @property
    def density(self) -> float:
        return self.n / self.m

    @property
    def metadata_bits_per_chunk(self) -> int:
        """Index bits per chunk: one ``log2(m/block)``-bit index per kept sub-chunk.

        2:4 -> 2 indices × 2 bits = 4; pair-wise 4:8 -> 2 sub-chunk indices × 2 bits = 4 (GPUSQ-ViT appendix §2.1).
        """
        return (self.n // self.block) * math.ceil(math.log2(self.m // self.block))

    def chunk_bits(self, value_bits: int | float) -> float:
        """Stored bits of one ``m``-chunk at ``value_bits`` per kept value (FP16 2:4: 2·16 + 4 = 36)."""
        return self.n * value_bits + self.metadata_bits_per_chunk


PATTERNS: dict[str, NMPattern] = {"2:4": NMPattern(2, 4), "4:8": NMPattern(4, 8, block=2)}


def get_pattern(pattern: str | NMPattern) -> NMPattern:
    """``"2:4"`` or ``"4:8"`` (pair-wise, for INT4), or an :class:`NMPattern` as is."""
    if isinstance(pattern, NMPattern):
        return pattern
    if pattern not in PATTERNS:
        raise ConfigError(f"pattern must be one of {list(PATTERNS)} or an NMPattern, got {pattern!r}")
    return PATTERNS[pattern]


def gemm_view(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the GEMM's (out, reduction) matrix (a view for contiguous weights)."""
    return weight.reshape(weight.shape[0], -1)


def nm_mask(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Boolean mask of ``weight``'s shape keeping the largest-magnitude sub-chunks of every chunk.

    A sub-chunk's magnitude is the sum of its absolute values (block 1: ``|w|``). Ties keep the
    earlier position (stable sort), so the mask is deterministic.

    Raises:
        ConfigError: the reduction dimension is not a multiple of ``pattern.m``.
    """
    w = gemm_view(weight.detach())
    rows, k = w.shape
    if k % pattern.m:
        raise ConfigError(f"reduction dimension {k} is not a multiple of {pattern.m}")
    sub = pattern.m // pattern.block
    score = w.abs().float().reshape(rows, k // pattern.m, sub, pattern.block).sum(-1)  # (R, chunks, sub)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(score, dtype=torch.bool)
    keep.scatter_(-1, order[..., : pattern.n // pattern.block], True)
    return keep.unsqueeze(-1).expand(-1, -1, -1, pattern.block).reshape(weight.shape)


def follows_pattern(weight: torch.Tensor, pattern: NMPattern) -> bool:
    """Whether every chunk has at most ``n`` non-zeros, grouped in whole ``block``-wide sub-chunks."""
    w = gemm_view(weight.detach())
    rows, k = w.shape
    if k % pattern.m:
        return False
    nz = (w != 0).reshape(rows, k // pattern.m, pattern.m // pattern.block, pattern.block)
    sub_used = nz.any(-1)  # a sub-chunk with any non-zero is stored whole
    return bool((sub_used.sum(-1) <= pattern.n // pattern.block).all())


def storage_bits(channel_bits: torch.Tensor, reduction: int, pattern: NMPattern) -> int:
    """Bits to store a sparse weight: per output channel, chunks × (n × bits + metadata).

    Args:
        channel_bits: (out,) value bits of each output channel (32 = float).
        reduction: weights per output channel (a multiple of ``pattern.m``).
        pattern: the N:M pattern.
    """
    chunks = reduction // pattern.m
    meta = pattern.metadata_bits_per_chunk
    # float64 is exact: small integer bit widths, sums far below 2**53
    return int(round(chunks * float((pattern.n * channel_bits.double() + meta).sum())))
