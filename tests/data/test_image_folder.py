"""Image folders: one-line errors naming the folder or file, class mapping, workers that change nothing."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset

from vitcompress.data.calib import first_images
from vitcompress.data.datasets import check_classes, make_loader
from vitcompress.data.folder import ImageFolderData, verify_images
from vitcompress.data.source import DataSource
from vitcompress.errors import ConfigError, DataError
from vitcompress.eval import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")


def _png(path: Path, size=(19, 23), mode="RGB", value=None, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path)
    return path


def _folder(root: Path, classes="abc", per_class=3) -> Path:
    for k, cls in enumerate(classes):
        for i in range(per_class):
            _png(root / cls / f"{i}.png", size=(17 + i, 20 + k), mode="L" if i % 2 else "RGB", seed=10 * k + i)
    return root


def _model(num_classes=3):
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, img_size=16, patch_size=8, depth=1
    )


def _one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message, message
    return message


def test_no_class_folders(tmp_path):
    _png(tmp_path / "loose.png")
    with pytest.raises(DataError) as e:
        DataSource(calib_data=str(tmp_path), eval_data=str(tmp_path)).train_set(_model())
    assert _one_line(e) == (
        f"image folder {tmp_path} has no class folders: put each class's images in {tmp_path}/<class name>/"
    )


def test_empty_class_folder(tmp_path):
    _folder(tmp_path, "ab")
    (tmp_path / "c" / ".hidden").mkdir(parents=True)
    (tmp_path / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        ImageFolderData(tmp_path, transform=lambda img: img)
    assert _one_line(e).startswith(f"class folder {tmp_path / 'c'} holds no images (extensions: .jpg")


def test_files_found_recursively_by_extension_hidden_skipped(tmp_path):
    _folder(tmp_path, "ab", per_class=1)
    _png(tmp_path / "a" / "deeper" / "X.PNG")
    _png(tmp_path / "a" / ".cache" / "skip.png")
    _png(tmp_path / ".ipynb_checkpoints" / "z.png")
    ds = ImageFolderData(tmp_path, transform=lambda img: img)
    assert ds.classes == ["a", "b"] and [p.name for p, _ in ds.samples] == ["0.png", "X.PNG", "0.png"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_names_the_file(tmp_path, damage, workers):
    _folder(tmp_path / "val")
    bad = tmp_path / "val" / "b" / "1.png"
    if damage == "garbage":
        bad.write_bytes(b"this is not a PNG")
    else:
        bad.write_bytes(bad.read_bytes()[:60])
    model = _model()
    ds = DataSource(eval_data=str(tmp_path / "val"), workers=workers).eval_set(model)
    with pytest.raises(DataError) as e:
        evaluate(model, ds, batch_size=2)
    assert _one_line(e).startswith(f"cannot read image {bad}: ")
    with pytest.raises(DataError, match=f"cannot read image {bad}"):
        verify_images(Subset(ds, [0, 4, 5]))
    assert verify_images(Subset(ds, [0, 1])) == 2


def test_more_classes_than_the_model(tmp_path):
    _folder(tmp_path / "train", "abcde")
    _folder(tmp_path / "val", "abc")
    source = DataSource(data=f"imagefolder:{tmp_path}")
    with pytest.raises(DataError) as e:
        source.train_set(_model(num_classes=4))
    assert _one_line(e).startswith(f"{tmp_path / 'train'} has 5 classes but the model has num_classes=4: ")
    with pytest.raises(DataError, match="has 5 classes but the model has num_classes=4"):
        source.eval_set(_model(num_classes=4))  # labels follow train/: 5 classes
    check_classes(source.eval_set(_model(num_classes=5)), _model(num_classes=5))
    with pytest.raises(DataError, match="Fashion-MNIST has 10 classes but the model has num_classes=4"):
        check_classes(Subset(_TenClasses(), [0]), _model(num_classes=4))


class _TenClasses(torch.utils.data.Dataset):
    classes, root_name = tuple(range(10)), "Fashion-MNIST"


def test_missing_train_or_val_says_which_flag(tmp_path):
    _folder(tmp_path / "val")
    source = DataSource(data=f"imagefolder:{tmp_path}")
    with pytest.raises(DataError) as e:
        source.train_set(_model())
    assert _one_line(e) == (
        f"{tmp_path / 'train'} not found: --data imagefolder:DIR takes the calibration/training images from "
        "DIR/train/<class>/; or name their folder with --calib-data DIR"
    )
    source.eval_set(_model())  # evaluation alone does not need train/
    _folder(tmp_path / "other")
    assert len(DataSource(data=f"imagefolder:{tmp_path}", calib_data=str(tmp_path / "other")).train_set(_model())) == 9
    (tmp_path / "val").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match=r"val not found: .* or name their folder with --eval-data DIR$"):
        source.eval_set(_model())
    with pytest.raises(DataError, match=f"^--eval-data {tmp_path / 'nope'}: no such folder$"):
        DataSource(eval_data=str(tmp_path / "nope")).eval_set(_model())
    with pytest.raises(DataError, match="no such folder"):
        DataSource(data=f"imagefolder:{tmp_path / 'nope'}").train_set(_model())


def test_one_folder_and_fashion_mnist_do_not_mix(tmp_path):
    _folder(tmp_path)
    with pytest.raises(ConfigError, match="--calib-data names the calibration images.*pass --eval-data DIR"):
        DataSource(calib_data=str(tmp_path)).eval_set(_model())
    with pytest.raises(ConfigError, match="--eval-data names the evaluation images.*pass --calib-data DIR"):
        DataSource(eval_data=str(tmp_path)).train_set(_model())


def test_evaluation_labels_follow_the_calibration_classes(tmp_path):
    _folder(tmp_path / "train", "abc")
    _folder(tmp_path / "val", "ac")
    ds = DataSource(data=f"imagefolder:{tmp_path}").eval_set(_model())
    assert ds.classes == ["a", "b", "c"] and sorted(set(ds.targets)) == [0, 2]
    _folder(tmp_path / "val", "d")
    with pytest.raises(DataError) as e:
        DataSource(data=f"imagefolder:{tmp_path}").eval_set(_model(num_classes=4))
    assert _one_line(e).startswith(f"class folder {tmp_path / 'val' / 'd'} is not one of the 3 classes")


def test_workers_change_nothing(tmp_path):
    _folder(tmp_path / "train", per_class=5)
    _folder(tmp_path / "val", per_class=7)
    model = _model()
    results, batches = [], []
    for workers in (0, 2):
        source = DataSource(data=f"imagefolder:{tmp_path}", workers=workers)
        test = source.eval_set(model)
        assert make_loader(test).num_workers == workers
        m = evaluate(model, test, batch_size=4)
        results.append((m.top1, m.top5, m.loss, m.images))
        batches.append(first_images(Subset(source.train_set(model), range(2, 13)), 11, batch_size=3))
    assert results[0] == results[1] and torch.equal(batches[0], batches[1])
    assert evaluate(model, test, batch_size=4, workers=0).loss == results[0][2]
    loader = DataLoader(test, batch_size=5, num_workers=2)  # any DataLoader works as evaluation data
    assert evaluate(model, loader).loss == pytest.approx(results[0][2], rel=1e-6)


class _Draws(torch.utils.data.Dataset):
    """Items are draws of the dataset's augmentation generator (as an augmenting transform makes them)."""

    def __init__(self):
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.rand(1, generator=self.generator), i


def test_augmenting_workers_get_distinct_seeded_streams():
    runs = [torch.cat([x for x, _ in make_loader(_Draws(), batch_size=1, seed=5, workers=2)]) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])  # the loader's seed replays the same draws
    assert (
        len(set(runs[0].flatten().tolist())) == 8
    )  # the two workers' copies of the generator do not repeat each other
