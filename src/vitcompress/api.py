"""``compress_``: the one verb of every method, dispatched on the type of its config."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from vitcompress.methods.registry import method_for
from vitcompress.result import Result


def compress_(
    model: nn.Module,
    config: Any,
    calib: Dataset | DataLoader | Iterable | None,
    *,
    train_data: Dataset | None = None,
    eval_data: Dataset | Iterable | None = None,
    state_dir: str | Path | None = None,
    resume: bool = False,
) -> Result:
    """Compress ``model`` in place with the method ``config`` selects, on the model's device.

    Every stage (calibration, search, training, evaluation) runs where ``model`` is: move it first
    (``model.cuda()``) to compress on a GPU. The data may stay on the CPU; batches are moved as they are used.

    Args:
        model: a float timm ViT/DeiT/Swin (Evol-Q also takes a model quantized already).
        config: a :class:`~vitcompress.config.Recipe` (post-training quantization), an
            :class:`~vitcompress.methods.evolq.EvolQConfig`, :class:`~vitcompress.methods.flbq.FLBQConfig`,
            :class:`~vitcompress.methods.gpusq.GPUSQConfig` or :class:`~vitcompress.methods.mixaq.MixAQConfig`.
        calib: calibration images: a Dataset of (image, label), a DataLoader, or an iterable of batches.
        train_data: training images (GPUSQ-ViT and MixA-Q's adaptation train on it).
        eval_data: images whose accuracy is logged along the way (never used for selection).
        state_dir: where a search or training keeps its resumable state.
        resume: continue the state saved in ``state_dir``.

    Returns:
        A :class:`~vitcompress.result.Result` with the method's own numbers and plan.

    Raises:
        ConfigError: the config selects no method, or is invalid for this model.
    """
    method = method_for(config)
    state = Path(state_dir) if state_dir is not None else None
    return method.handler(
        model, config, calib, train_data=train_data, eval_data=eval_data, state_dir=state, resume=resume
    )
