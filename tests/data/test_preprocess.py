"""A model's own preprocessing: timm's eval transform exactly, overrides, channel conversion, the zoo path."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vitcompress.data import InputSpec, load_dataset
from vitcompress.data.preprocess import PREPROCESS_ATTR, random_resized_crop_params, resolve_preprocess
from vitcompress.data.source import DataSource
from vitcompress.errors import ConfigError
from vitcompress.models.registry import model_from_source

pytestmark = pytest.mark.usefixtures("one_thread")


def _write(folder: Path, name: str, size: tuple[int, int], mode: str, seed: int) -> Path:
    """One random image of (width, height) ``size`` and PIL ``mode`` (PNG, or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode in ("L", "I;16") else (h, w, len(mode))
    high = 65536 if mode == "I;16" else 256
    arr = rng.integers(0, high, shape).astype(np.uint16 if mode == "I;16" else np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    Image.fromarray(arr, mode if mode != "I;16" else None).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and val/ with classes a, b, c: RGB and L PNGs, an RGBA PNG and a JPEG, odd sizes."""
    specs = [
        ("0.png", (37, 50), "RGB"),
        ("1.png", (61, 23), "L"),
        ("2.jpg", (40, 41), "RGB"),
        ("3.png", (30, 33), "RGBA"),
    ]
    for split in ("train", "val"):
        for k, cls in enumerate("abc"):
            for j, (name, size, mode) in enumerate(specs):
                _write(tmp_path / split / cls, name, size, mode, seed=100 * k + j)
    return tmp_path


def _timm_model(**kw):
    return timm.create_model("deit_tiny_patch16_224", **{"pretrained": False, "num_classes": 3, **kw})


def _opened(path: Path, mode: str):
    with Image.open(path) as img:
        return img.convert(mode)


def test_eval_images_equal_timms_create_transform(folder):
    model = _timm_model()
    expected = create_transform(**resolve_data_config({}, model=model), is_training=False)
    source = DataSource(data=f"imagefolder:{folder}")
    for ds in (source.eval_set(model), source.train_set(model)):  # calibration images: the eval transform
        assert len(ds) == 12 and ds.classes == ["a", "b", "c"]
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 224, 224) and y == i // 4
            assert torch.equal(x, expected(_opened(ds.samples[i][0], "RGB")))


def test_overrides_per_channel_mean_std_size_crop_interpolation(folder):
    model = _timm_model()
    source = DataSource(
        eval_data=str(folder / "val"),
        calib_data=str(folder / "train"),
        input_size=(64, 48),
        mean=(0.1, 0.2, 0.3),
        std=(0.5, 0.6, 0.7),
        crop_pct=1.0,
        interpolation="bilinear",
    )
    pre = source.preprocess(model)
    assert (pre.input_size, pre.mean, pre.std, pre.crop_pct, pre.interpolation) == (
        (3, 64, 48),
        (0.1, 0.2, 0.3),
        (0.5, 0.6, 0.7),
        1.0,
        "bilinear",
    )
    expected = create_transform(
        input_size=(3, 64, 48), mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7), crop_pct=1.0, interpolation="bilinear"
    )
    ds = source.eval_set(model)
    assert torch.equal(ds[1][0], expected(_opened(ds.samples[1][0], "RGB")))
    one = resolve_preprocess(model, mean=0.5, std=(0.25,), input_size=96)
    assert (one.mean, one.std, one.input_size) == ((0.5,) * 3, (0.25,) * 3, (3, 96, 96))
    with pytest.raises(ConfigError, match=r"mean has 2 values; give one, or one per channel \(3 for this model\)"):
        resolve_preprocess(model, mean=(0.5, 0.5))


def test_grayscale_model_gets_L_images_and_averaged_statistics(folder):
    model = _timm_model(in_chans=1, img_size=64)
    pre = DataSource().preprocess(model)
    mean, std = sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3
    assert pre.input_size == (1, 64, 64) and pre.mean == pytest.approx((mean,)) and pre.std == pytest.approx((std,))
    expected = create_transform(**pre.timm_config(), is_training=False)
    ds = DataSource(data=f"imagefolder:{folder}").eval_set(model)
    for i in range(4):  # RGB, L, JPEG and RGBA files all become one channel, converted by PIL's "L"
        x, _ = ds[i]
        assert x.shape == (1, 64, 64) and torch.equal(x, expected(_opened(ds.samples[i][0], "L")))
    with pytest.raises(ConfigError, match="mean has 3 values"):  # a user's 3 values for 1 channel is a mistake
        resolve_preprocess(model, mean=(0.1, 0.2, 0.3))


def test_16_bit_grayscale_is_scaled_to_8_bits(tmp_path):
    path = _write(tmp_path / "train" / "a", "wide.png", (20, 20), "I;16", seed=0)
    with Image.open(path) as img:
        raw = np.asarray(img, dtype=np.float64)
    model = _timm_model(in_chans=1, img_size=32)
    ds = DataSource(calib_data=str(tmp_path / "train"), mean=0.0, std=1.0, crop_pct=1.0, input_size=20).train_set(model)
    assert ds[0][0].shape == (1, 20, 20)
    expected = np.clip(np.rint(raw / 257.0), 0, 255) / 255.0
    assert np.allclose(ds[0][0][0].numpy(), expected, atol=1e-6)


def test_attached_preprocess_wins(folder):
    model = _timm_model()
    setattr(
        model,
        PREPROCESS_ATTR,
        {"input_size": (3, 224, 224), "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0,
         "interpolation": "bilinear", "crop_mode": "squash"},
    )  # fmt: skip
    pre = DataSource(std=0.25).preprocess(model)
    assert (pre.mean, pre.std, pre.crop_pct, pre.crop_mode) == ((0.5,) * 3, (0.25,) * 3, 1.0, "squash")
    ds = DataSource(data=f"imagefolder:{folder}", std=0.25).eval_set(model)
    expected = create_transform(**pre.timm_config(), is_training=False)
    assert torch.equal(ds[0][0], expected(_opened(ds.samples[0][0], "RGB")))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1").tobytes())


@pytest.fixture
def fmnist_root(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    root.mkdir()
    for split, n in (("train", 20), ("t10k", 10)):
        _write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_zoo_models_keep_the_exact_pad_path(name, fmnist_root, tmp_path):
    model = model_from_source({"name": name}, weights=False)
    spec = InputSpec(model.patch_embed.img_size[0], 1)
    source = DataSource()
    assert source.preprocess(model).exact_pad
    pairs = [
        (source.eval_set(model, fmnist_root), load_dataset(spec, "test", fmnist_root)),
        (source.train_set(model, fmnist_root), load_dataset(spec, "train", fmnist_root)),
        (
            source.train_set(model, fmnist_root, augment=True, seed=4),
            load_dataset(spec, "train", fmnist_root, augment=True, seed=4),
        ),
    ]
    for new, old in pairs:
        for i in range(len(old)):
            assert torch.equal(new[i][0], old[i][0]) and new[i][1] == old[i][1]
    # the same images as 28-px PNGs (RGB here) in an image folder: identical tensors
    test = load_dataset(spec, "test", fmnist_root)
    for i in range(len(test)):
        pixels = test.images[i].numpy()
        cls = tmp_path / "png" / f"{int(test.targets[i])}"
        cls.mkdir(parents=True)
        Image.fromarray(np.stack([pixels] * 3, -1)).save(cls / f"{i}.png")
    folder = DataSource(eval_data=str(tmp_path / "png")).eval_set(model)
    for j, (path, label) in enumerate(folder.samples):
        i = int(path.stem)
        assert torch.equal(folder[j][0], test[i][0]) and label == test[i][1]


def test_other_models_get_their_own_preprocessing_on_fashion_mnist(fmnist_root):
    model = _timm_model(img_size=32, patch_size=8, num_classes=10)
    ds = DataSource().eval_set(model, fmnist_root)
    expected = create_transform(**DataSource().preprocess(model).timm_config(), is_training=False)
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == 3
    assert torch.equal(x, expected(Image.fromarray(ds.images[3].numpy(), "L").convert("RGB")))


def test_augmentation_is_seeded_and_reproducible(folder):
    model = _timm_model(img_size=32, patch_size=8)
    source = DataSource(data=f"imagefolder:{folder}")
    a, b = source.train_set(model, augment=True, seed=1), source.train_set(model, augment=True, seed=1)
    first = [a[i][0] for i in range(12)]
    assert all(torch.equal(x, b[i][0]) for i, x in enumerate(first))
    assert first[0].shape == (3, 32, 32)
    a.generator.manual_seed(1)  # what the trainer does before each step: re-seeding replays the draws
    assert all(torch.equal(x, a[i][0]) for i, x in enumerate(first))
    c = source.train_set(model, augment=True, seed=2)
    assert not all(torch.equal(x, c[i][0]) for i, x in enumerate(first))
    plain = source.train_set(model)
    assert not torch.equal(first[0], plain[0][0]) and plain.generator is None


def test_random_resized_crop_params_stay_inside_the_image():
    g = torch.Generator().manual_seed(0)
    for size in ((37, 50), (200, 10), (5, 5)):
        for _ in range(50):
            top, left, h, w = random_resized_crop_params(size, g)
            assert min(top, left) >= 0 and min(h, w) > 0 and top + h <= size[1] and left + w <= size[0]
