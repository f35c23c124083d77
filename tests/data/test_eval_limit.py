"""``eval --limit N`` reads and preprocesses only the first N test images (counted with a spy on the dataset)."""

import numpy as np
import pytest
from PIL import Image

from vitcompress.cli import main
from vitcompress.data.datasets import FashionMNIST
from vitcompress.data.folder import ImageFolderData

pytestmark = pytest.mark.usefixtures("one_thread")


def _spy(monkeypatch, cls) -> list[int]:
    seen: list[int] = []
    original = cls.__getitem__

    def getitem(self, i):
        seen.append(i)
        return original(self, i)

    monkeypatch.setattr(cls, "__getitem__", getitem)
    return seen


def test_eval_limit_reads_only_the_first_images_of_fashion_mnist(monkeypatch, capsys):
    seen = _spy(monkeypatch, FashionMNIST)
    assert main(["eval", "--model", "vit-fmnist", "--limit", "8", "--json"]) == 0
    assert sorted(seen) == list(range(8))  # not the 10,000 test images


def test_eval_limit_reads_only_the_first_images_of_a_folder(monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(12):
                pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(tmp_path / split / c / f"{i}.png")
    seen = _spy(monkeypatch, ImageFolderData)
    args = ["eval", "--model", "vit-fmnist", "--data", f"imagefolder:{tmp_path}", "--workers", "0", "--limit", "5"]
    assert main([*args, "--json"]) == 0
    assert sorted(seen) == list(range(5))  # of 24 images
