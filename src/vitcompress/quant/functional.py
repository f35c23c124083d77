"""Functional reference of every quantizer: uniform affine, log2 and power-of-two factor (PTF).

- uniform affine: ``q = clamp(round(x/s) + z, qmin, qmax)``, ``x̂ = (q − z)·s``; signed symmetric
  (``z = 0``, codes ``[−2^(b−1), 2^(b−1) − 1]``) or unsigned asymmetric (codes ``[0, 2^b − 1]``);
- log2 for attention probabilities and PTF for LayerNorm inputs, both from FQ-ViT (Lin, Zhang, Sun,
  Li, Zhou, "FQ-ViT: Post-Training Quantization for Fully Quantized Vision Transformer", IJCAI 2022,
  arXiv:2111.13824);
- learnable scales get the gradient of LSQ (Esser, McKinstry, Bablani, Appuswamy, Modha, "Learned
  Step Size Quantization", ICLR 2020, arXiv:1902.08153).

The quantizer modules call these functions, so a module's output equals its functional reference
exactly (``torch.equal``). Gradients use the straight-through estimator (STE): rounding passes the
gradient unchanged; clamping passes it only inside the clamping range.
"""

from __future__ import annotations

import torch

from vitcompress.errors import ConfigError

Bound = int | float | torch.Tensor


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer grid ``(qmin, qmax)`` of a ``bits``-wide quantizer.

    Args:
        bits: bit width, an integer in 2..32.
        symmetric: signed grid ``[-2^(b-1), 2^(b-1)-1]`` if True, else unsigned ``[0, 2^b-1]``.

    Raises:
        ConfigError: ``bits`` is not an integer in 2..32.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ConfigError(f"bits must be an integer in 2..32, got {bits!r}")
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def qrange_tensor(
    bits: torch.Tensor, symmetric: bool, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`qrange` for a tensor of bit widths (per-group bits): ``(qmin, qmax)`` as tensors of
    its shape in ``dtype`` (exact: powers of two up to 2^16 are representable in float32)."""
    bits = bits.to(dtype)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return torch.zeros_like(bits), 2**bits - 1


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest (half to even, as ``torch.round``) with a straight-through gradient."""
    return x + (x.round() - x).detach()


def grad_scale(t: torch.Tensor, g: float | torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; the gradient is multiplied by ``g`` (LSQ, Esser et al. 2020).

    The forward value is exactly ``t`` (``t + (y − y)`` with ``y = t·g``), so a learnable-scale
    quantizer still equals its functional reference bit for bit.
    """
    scaled = t * g
    return t.detach() + (scaled - scaled.detach())


def _needs_grad(*tensors: object) -> bool:
    return torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def _same_shape(u: torch.Tensor, *others: object) -> bool:
    """Whether in-place ops on ``u`` with ``others`` keep ``u``'s shape (they broadcast into it)."""
    shapes = [t.shape for t in others if isinstance(t, torch.Tensor)]
    return not shapes or torch.broadcast_shapes(u.shape, *shapes) == u.shape


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: Bound, qmax: Bound
) -> torch.Tensor:
    """Uniform affine fake quantization: ``q = clamp(round(x/s) + z, qmin, qmax)``, ``x̂ = (q − z)·s``.

    All of ``scale``, ``zero_point``, ``qmin``, ``qmax`` broadcast against ``x`` (per-tensor scalars,
    per-channel or per-group tensors shaped for broadcasting). Gradients are those of LSQ (Esser et
    al. 2020), with ``v = x/s + z``: to ``x`` 1 where ``qmin ≤ v ≤ qmax`` else 0 (STE with
    clipping); to ``s`` ``round(x/s) − x/s`` inside and the clipped code ``qmin − z`` / ``qmax − z``
    outside.

    Args:
        x: values to quantize.
        scale: step size ``s`` (> 0).
        zero_point: integer-valued zero point ``z`` (0 for symmetric quantizers).
        qmin: lowest code.
        qmax: highest code.

    Returns:
        The de-quantized values ``x̂``, on the grid ``(k − z)·s`` for integer ``k`` in ``[qmin, qmax]``.
    """
    u = x / scale
    if not _needs_grad(x, scale, zero_point) and _same_shape(u, zero_point, qmin, qmax):
        # inference and calibration: the same value computed in place, without the gradient path (half the time)
        u.round_().add_(zero_point).clamp_(qmin, qmax)
        return u.sub_(zero_point).mul_(scale)
    hard = torch.clamp(torch.round(u.detach()) + zero_point, qmin, qmax)  # the value: clamp(round(x/s) + z) exactly
    soft = torch.clamp(u + zero_point, qmin, qmax)  # the gradient path: clip on the unrounded code (LSQ)
    # soft and hard differ by at most half a code, so hard − soft is exact (Sterbenz) and the sum is hard
    q = soft + (hard - soft).detach()
    return (q - zero_point) * scale


def log2_fake_quant(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Log2 quantizer for values in [0, 1] (attention probabilities, as in FQ-ViT).

    ``q = clamp(round(−log2 x), 0, 2^b − 1)``, ``x̂ = 2^(−q)``; values whose ``q`` would exceed
    ``2^b − 1`` become 0, as do zeros (and negative values, which probabilities never are). Values
    above 1 give ``q = 0`` (``x̂ = 1``). The gradient passes straight through.

    Args:
        x: probabilities.
        bits: bit width, 2..16.
    """
    levels = 2**bits - 1
    positive = x > 0
    # non-positive values take a dummy 1 (finite log2) and are set to 0 below
    q = torch.round(-torch.log2(torch.where(positive, x, torch.ones_like(x)))).clamp_min(0.0)
    x_hat = torch.where((q > levels) | ~positive, torch.zeros_like(x), torch.exp2(-q))
    return x + (x_hat - x).detach()


def ptf_fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, alpha: torch.Tensor, qmin: Bound, qmax: Bound
) -> torch.Tensor:
    """Power-of-two-factor quantization (FQ-ViT): channel ``c`` on the last axis uses
    scale ``s·2^α_c`` and the shared zero point.

    Args:
        x: values with channels on the last axis (tokens × C).
        scale: the base scale ``s = s_layer / 8`` (scalar).
        zero_point: the layer zero point (scalar).
        alpha: per-channel factor exponent ``α_c`` in {0, 1, 2, 3}, shape (C,).
        qmin: lowest code.
        qmax: highest code.
    """
    return fake_quant(x, scale * torch.exp2(alpha.to(scale.dtype)), zero_point, qmin, qmax)


def token_qparams(
    scale: torch.Tensor, zero_point: torch.Tensor, token_scale: torch.Tensor, token_zero: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of every token of a ``(B, n, C)`` input whose leading tokens are apart.

    Token ``t < p = min(len(token_scale), n)`` uses ``token_scale[t]``, ``token_zero[t]`` on all its
    channels; the others use ``scale``/``zero_point`` (a scalar, or (C,) for PTF). Returns two tensors
    of shape (n, 1) or (n, C), which broadcast against the input in :func:`fake_quant`.
    """
    p = min(token_scale.numel(), n)
    width = max(scale.numel(), zero_point.numel())
    rest_s = scale.reshape(1, -1).expand(n - p, width)
    rest_z = zero_point.to(scale.dtype).reshape(1, -1).expand(n - p, width)
    lead_s = token_scale[:p].to(scale.dtype).reshape(p, 1).expand(p, width)
    lead_z = token_zero[:p].to(scale.dtype).reshape(p, 1).expand(p, width)
    return torch.cat([lead_s, rest_s]), torch.cat([lead_z, rest_z])
