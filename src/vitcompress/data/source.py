"""``DataSource``: the images a command calibrates, trains and evaluates on, named the same way everywhere."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn
from torch.utils.data import Dataset

from vitcompress.data.datasets import load_dataset
from vitcompress.models.registry import input_spec_of


@dataclass(frozen=True)
class DataSource:
    """Where the images come from.

    Attributes:
        data: fashion-mnist (the embedded demo), or imagefolder:DIR with DIR/train (calibration and training
            images) and DIR/val (evaluation images), one sub-folder per class
    """

    data: str = "fashion-mnist"

    def train_set(
        self, model: nn.Module, data_root: str | Path | None = None, *, augment: bool = False, seed: int = 0
    ) -> Dataset:
        """Calibration / training images, preprocessed for ``model``."""
        return load_dataset(input_spec_of(model), "train", data_root, augment=augment, seed=seed)

    def eval_set(self, model: nn.Module, data_root: str | Path | None = None) -> Dataset:
        """Evaluation images, preprocessed for ``model``."""
        return load_dataset(input_spec_of(model), "test", data_root)
