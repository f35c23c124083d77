"""Fitness of a quantized model's logits against the cached full-precision logits (lower is better).

``infonce`` is Evol-Q's fitness (Frumkin, Gope, Marculescu, "Jumping through Local Minima: Quantization
in the Loss Landscape of Vision Transformers", ICCV 2023, arXiv:2308.10814): for a batch of N images,
``q = normalize(z_q)``, ``k = normalize(z_fp)``, ``logits = q·kᵀ / T`` (N×N) and
``L = cross_entropy(logits, arange(N))·2T``: the positive of image i is its own full-precision
output, the negatives are the full-precision outputs of the other images of the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vitcompress.errors import ConfigError

FitnessFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def infonce(z_q: torch.Tensor, z_fp: torch.Tensor, temperature: float = 3.0) -> torch.Tensor:
    """Contrastive loss of (N, K) quantized logits against (N, K) float logits; needs N >= 2."""
    if z_q.shape[0] < 2:
        raise ConfigError(
            f"infoNCE fitness needs at least 2 images per batch (the negatives), got batch size "
            f"{z_q.shape[0]}; use a batch_size >= 2 or another fitness"
        )
    q, k = F.normalize(z_q.float(), dim=1), F.normalize(z_fp.float(), dim=1)
    logits = q @ k.T / temperature  # (N, N): row i, column j = similarity of quantized i to float j
    return F.cross_entropy(logits, torch.arange(len(q), device=q.device)) * (2 * temperature)


def mse(z_q: torch.Tensor, z_fp: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the logits."""
    return F.mse_loss(z_q.float(), z_fp.float())


def cosine(z_q: torch.Tensor, z_fp: torch.Tensor) -> torch.Tensor:
    """1 − mean cosine similarity of each image's logits."""
    return 1.0 - F.cosine_similarity(z_q.float(), z_fp.float(), dim=1).mean()


def kl(z_q: torch.Tensor, z_fp: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_fp) ‖ softmax(z_q)), mean over images."""
    return F.kl_div(
        F.log_softmax(z_q.float(), 1), F.log_softmax(z_fp.float(), 1), log_target=True, reduction="batchmean"
    )


def fitness_fn(name: str, temperature: float = 3.0) -> FitnessFn:
    """The fitness function called ``name`` (one of ``infonce``, ``mse``, ``cosine``, ``kl``)."""
    if name == "infonce":
        return lambda z_q, z_fp: infonce(z_q, z_fp, temperature)
    table = {"mse": mse, "cosine": cosine, "kl": kl}
    if name not in table:
        raise ConfigError(f"fitness must be one of ['infonce', 'mse', 'cosine', 'kl'], got {name!r}")
    return table[name]
