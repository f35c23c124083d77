import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from vitcompress.data import DEFAULT_FMNIST_ROOT, InputSpec, calibration_subset, load_dataset
from vitcompress.data.datasets import dataset_targets, fit_to_model
from vitcompress.data.idx import read_idx
from vitcompress.errors import DataError

needs_fmnist = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed"
)


def _write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1").tobytes())


@pytest.fixture
def tiny_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_idx_roundtrip(tiny_root):
    images = read_idx(tiny_root / "train-images-idx3-ubyte.gz")
    assert images.shape == (40, 28, 28) and images.dtype == np.uint8


def test_truncated_idx_is_rejected(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 10)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_missing_data_names_package_and_flag(tmp_path):
    with pytest.raises(DataError, match=r"dataset-fashion-mnist.*--data-root"):
        load_dataset(InputSpec(28, 1), "test", tmp_path)


def test_data_root_and_transform_fit_model(tiny_root):
    ds = load_dataset(InputSpec(32, 3), "test", tiny_root)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == 3
    # 28 -> 32 is an exact zero pad of 2 pixels: the border holds the normalised zero
    assert torch.allclose(x[:, :2, :], torch.full_like(x[:, :2, :], -0.2860 / 0.3530), atol=1e-6)


def test_fit_to_model_resizes_odd_difference():
    x = torch.rand(1, 28, 28)
    assert fit_to_model(x, InputSpec(33, 1)).shape == (1, 33, 33)


def test_calibration_subset_seeded_and_balanced(tiny_root):
    ds = load_dataset(InputSpec(28, 1), "train", tiny_root)
    a, b = calibration_subset(ds, 20, seed=1), calibration_subset(ds, 20, seed=1)
    assert a.indices == b.indices
    assert calibration_subset(ds, 20, seed=2).indices != a.indices
    counts = torch.bincount(dataset_targets(calibration_subset(ds, 20, seed=3, balanced=True)), minlength=10)
    assert counts.tolist() == [2] * 10


def test_calibration_subset_bad_sizes(tiny_root):
    ds = load_dataset(InputSpec(28, 1), "train", tiny_root)
    with pytest.raises(DataError, match="calibration size"):
        calibration_subset(ds, 0)
    with pytest.raises(DataError, match="exceeds"):
        calibration_subset(ds, 41)


def test_imagefolder(tmp_path):
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(np.full((20, 20, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(InputSpec(28, 1), name="imagefolder", data_root=tmp_path)
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and y == 1 and len(ds) == 4


@needs_fmnist
def test_debian_fashion_mnist():
    ds = load_dataset(InputSpec(28, 1), "test")
    assert len(ds) == 10_000
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


# ---- idx files whose values are not what Fashion-MNIST holds: one line naming the file -----------------
def _write_typed_idx(path: Path, array: np.ndarray) -> None:
    """An idx file of ``array``'s own type (float32 0x0D, float64 0x0E, int32 0x0C)."""
    code, dtype = {np.dtype(np.float32): (0x0D, ">f4"), np.dtype(np.float64): (0x0E, ">f8")}.get(
        array.dtype, (0x0C, ">i4")
    )
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(dtype).tobytes())


@pytest.mark.parametrize(
    "pixels, message",
    [
        (
            np.full((20, 28, 28), 255000.0, np.float32),
            r"pixel values must be whole numbers in 0\.\.255.*e\.g\. 255000\.0",
        ),
        (np.full((20, 28, 28), 0.5, np.float32), r"15680 are not, e\.g\. 0\.5 \(image 0\)"),  # scaled to [0, 1]
        (np.full((20, 28, 28), -1.0), r"e\.g\. -1\.0"),
        (np.full((20, 28, 28), 300, np.int32), r"e\.g\. 300 "),
    ],
)
def test_idx_pixels_outside_8_bit_grey_levels_are_flagged(tiny_root, pixels, message):
    path = tiny_root / "t10k-images-idx3-ubyte.gz"
    _write_typed_idx(path, pixels)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(InputSpec(28, 1), "test", tiny_root)
    assert str(e.value).startswith(str(path))


def test_idx_non_finite_pixels_are_flagged(tiny_root):
    pixels = np.zeros((20, 28, 28), np.float32)
    pixels[7, 3, 3], pixels[9, 0, 0] = np.nan, np.inf
    _write_typed_idx(tiny_root / "t10k-images-idx3-ubyte.gz", pixels)
    with pytest.raises(DataError, match=r"t10k-images.*: pixel values .* 2 are not, e\.g\. nan \(image 7\)"):
        load_dataset(InputSpec(28, 1), "test", tiny_root)


def test_idx_float_pixels_that_are_grey_levels_load_as_uint8(tiny_root):
    expected = load_dataset(InputSpec(28, 1), "test", tiny_root)
    _write_typed_idx(tiny_root / "t10k-images-idx3-ubyte.gz", expected.images.numpy().astype(np.float32))
    ds = load_dataset(InputSpec(28, 1), "test", tiny_root)
    assert ds.images.dtype == torch.uint8 and torch.equal(ds.images, expected.images)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.arange(20) % 10 + 3, r"labels must be class indices 0\.\.9; 6 are not, e\.g\. 10 \(image 7\)"),
        (np.arange(20) - 1, r"labels must be class indices 0\.\.9; 10 are not, e\.g\. -1 \(image 0\)"),
        (np.full(20, 2.5), r"e\.g\. 2\.5"),
        (np.zeros((20, 2), np.int32), r"labels must be one dimension"),
    ],
)
def test_idx_labels_outside_the_classes_are_flagged(tiny_root, labels, message):
    path = tiny_root / "t10k-labels-idx1-ubyte.gz"
    _write_typed_idx(path, labels)
    with pytest.raises(DataError, match=message) as e:
        load_dataset(InputSpec(28, 1), "test", tiny_root)
    assert str(e.value).startswith(str(path))


def test_check_labels():
    from vitcompress.data.datasets import check_labels

    check_labels(torch.tensor([0, 9, 3]), 10, "batch 0")
    check_labels(torch.tensor([], dtype=torch.int64), 10, "batch 0")
    with pytest.raises(DataError, match=r"^batch 2: label 10 is outside the class range 0\.\.9 \(the model has 10"):
        check_labels(torch.tensor([0, 10, 3]), 10, "batch 2")
    with pytest.raises(DataError, match=r"label -1 is outside the class range 0 or more"):
        check_labels(torch.tensor([-1]), None, "batch 0")
    with pytest.raises(DataError, match=r"labels must be integer class indices, got dtype torch.float32"):
        check_labels(torch.tensor([1.0]), 10, "batch 0")
