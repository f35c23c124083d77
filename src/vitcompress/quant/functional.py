"""Functional reference of every quantizer (METHODS §0.1). The modules call these, so a module's
output equals its functional reference exactly."""

from __future__ import annotations

import torch


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid of a ``bits``-wide quantizer: signed [-2^(b-1), 2^(b-1)-1] or unsigned [0, 2^b-1]."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even, as torch.round) with a straight-through gradient."""
    return x + (x.round() - x).detach()


def grad_scale(t: torch.Tensor, g: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by ``g`` (LSQ, Esser et al. 2020)."""
    return t * g + (t - t * g).detach()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin, qmax) -> torch.Tensor:
    """``q = clamp(round(x/s) + z, qmin, qmax)``, ``x̂ = (q − z)·s``; all arguments broadcast.

    Gradients: straight through the rounding, zero outside the clamping range (STE with clipping).
    """
    q = torch.clamp(round_ste(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def log2_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Log2 quantizer for values in [0, 1] (attention probabilities).

    ``q = round(−log2 x)``, ``x̂ = 2^(−q)``; values whose q exceeds 2^b − 1 (and zeros) become 0.
    The gradient passes straight through.
    """
    levels = 2**bits - 1
    q = torch.round(-torch.log2(x.clamp_min(torch.finfo(x.dtype).tiny)))
    q = q.clamp_min(0.0)
    x_hat = torch.where((q > levels) | (x <= 0), torch.zeros_like(x), torch.exp2(-q))
    return x + (x_hat - x).detach()


def ptf_fake_quant(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, alpha: torch.Tensor,
                   qmin: int, qmax: int) -> torch.Tensor:
    """Power-of-two-factor quantization (FQ-ViT): channel c (last axis) uses scale ``s·2^α_c``."""
    return fake_quant(x, scale * torch.exp2(alpha.to(x.dtype)), zero_point, qmin, qmax)
