"""Bias correction of a de-quantized weight.

From Banner, Nahshan, Soudry, "Post training 4-bit quantization of convolutional networks for
rapid-deployment", NeurIPS 2019, arXiv:1810.05723: quantization shifts the mean and shrinks the
variance of each output channel's weights; correcting both removes that systematic error.
"""

from __future__ import annotations

import torch

from vitcompress.errors import DataError


def correct_bias(w: torch.Tensor, w_hat: torch.Tensor, axis: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Match the per-output-channel standard deviation, then the mean, of ``w_hat`` to those of ``w``.

    Per channel ``c`` of ``axis`` (Banner et al. 2019, in this order):

    1. variance: ``Ŵ ← (Ŵ − μ(Ŵ))·σ(W)/(σ(Ŵ) + eps) + μ(Ŵ)``;
    2. mean: ``Ŵ ← Ŵ − μ(Ŵ) + μ(W)``.

    σ is the population standard deviation over the other axes. Gradients flow through ``w_hat``
    (and ``w``), so the correction can sit inside a QAT forward pass.

    Args:
        w: the float weight.
        w_hat: its de-quantized (fake-quantized) version, same shape.
        axis: the output-channel axis.
        eps: added to σ(Ŵ) (a channel quantized to a constant keeps its values).

    Returns:
        The corrected weight (a new tensor); ``w_hat`` itself for a 1-D weight (nothing to average).
    """
    if w.shape != w_hat.shape:
        raise DataError(
            f"correct_bias: w and w_hat must have the same shape, got {tuple(w.shape)} and {tuple(w_hat.shape)}"
        )
    dims = [d for d in range(w.dim()) if d != axis % w.dim()]
    if not dims:
        return w_hat
    mu_hat = w_hat.mean(dim=dims, keepdim=True)
    std_w = w.std(dim=dims, keepdim=True, unbiased=False)
    std_hat = w_hat.std(dim=dims, keepdim=True, unbiased=False)
    w_hat = (w_hat - mu_hat) * (std_w / (std_hat + eps)) + mu_hat
    return w_hat - w_hat.mean(dim=dims, keepdim=True) + w.mean(dim=dims, keepdim=True)
