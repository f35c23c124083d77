"""Calibration data helpers: every way to pass images gives the same first N images, checked."""

import logging

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vitcompress.data.calib import cache_batches, first_batches, first_images, iter_images
from vitcompress.errors import ConfigError, DataError


def _images(n=10):
    return torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)


class _ImagesOnly(torch.utils.data.Dataset):
    """A Dataset of bare image tensors (no labels)."""

    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


@pytest.mark.parametrize("form", ["dataset", "images-dataset", "loader", "tensors", "pairs", "single-images"])
def test_first_images_is_the_same_for_every_form(form):
    x = _images()
    ds = TensorDataset(x, torch.zeros(10, dtype=torch.long))
    calib = {
        "dataset": ds,
        "images-dataset": _ImagesOnly(x),
        "loader": DataLoader(ds, batch_size=3),
        "tensors": list(x.split(3)),
        "pairs": [(b, None) for b in x.split(3)],
        "single-images": list(x),  # (C, H, W) tensors, one image each
    }[form]
    assert torch.equal(first_images(calib, 7, batch_size=4), x[:7])
    assert torch.equal(torch.cat(list(iter_images(calib, batch_size=4))), x)
    assert torch.equal(torch.cat(cache_batches(calib, batch_size=4)), x)


def test_first_batches_keep_the_batching_and_cut_the_last():
    x = _images()
    assert [len(b) for b in first_batches(TensorDataset(x, x), 7, batch_size=4)] == [4, 3]
    assert [len(b) for b in first_batches(list(x.split(3)), 7)] == [3, 3, 1]  # an iterable keeps its batches
    assert [len(b) for b in first_batches(list(x.split(3)), None)] == [3, 3, 3, 1]


def test_fewer_images_than_asked_is_logged_not_an_error(caplog):
    with caplog.at_level(logging.WARNING):
        got = first_images([_images(3)], 5, what="calib_size")
    assert len(got) == 3 and "calib_size is 5 but the calibration data holds 3 images" in caplog.text


def test_bad_data_and_bad_counts_are_errors():
    with pytest.raises(DataError, match="empty"):
        first_images([], 4)
    bad = _images(4)
    bad[2, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="batch 1 contains NaN or Inf"):
        first_images([_images(2), bad], 6)
    with pytest.raises(DataError, match="batch 0 is a float, expected a tensor"):
        first_images([[1.0, 2.0]], 1)  # a list is read as an (images, labels) pair
    with pytest.raises(DataError, match=r"batch 0 has shape \(4, 4\), expected \(N, C, H, W\) images or one"):
        first_images([torch.zeros(4, 4)], 1)
    for n in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="n_images"):
            first_batches([_images()], n)
