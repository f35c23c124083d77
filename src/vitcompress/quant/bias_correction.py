"""Bias correction of a de-quantized weight (Banner et al.; METHODS §0.3)."""

from __future__ import annotations

import torch


def correct_bias(w: torch.Tensor, w_hat: torch.Tensor, axis: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Match the per-output-channel variance, then the mean, of ``w_hat`` to those of ``w``.

    1. variance: ``Ŵ ← (Ŵ − μ(Ŵ))·σ(W)/(σ(Ŵ) + eps) + μ(Ŵ)``;  2. mean: ``Ŵ ← Ŵ − μ(Ŵ) + μ(W)``.
    """
    dims = [d for d in range(w.dim()) if d != axis % w.dim()]
    if not dims:
        return w_hat
    mu_hat = w_hat.mean(dim=dims, keepdim=True)
    std_w = w.std(dim=dims, keepdim=True, unbiased=False)
    std_hat = w_hat.std(dim=dims, keepdim=True, unbiased=False)
    w_hat = (w_hat - mu_hat) * (std_w / (std_hat + eps)) + mu_hat
    return w_hat - w_hat.mean(dim=dims, keepdim=True) + w.mean(dim=dims, keepdim=True)
