"""The embedded scene dataset (``vitcompress.data.scenes``): deterministic, consistent, atomic, cached."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from vitcompress.data.scenes import SceneConfig, SceneDataset, build_scenes, ensure_scenes, load_scenes, rle
from vitcompress.data.scenes import build as build_module
from vitcompress.data.scenes.compose import ITEM_THRESHOLD
from vitcompress.errors import ConfigError, DataError

TINY = SceneConfig(
    image_size=64, train_size=4, val_size=3, min_items=2, max_items=4, min_item_size=12, max_item_size=40
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_scenes(TINY, cache_dir=tmp_path_factory.mktemp("cache"))


def _manifest_files(folder):
    return json.loads((folder / "manifest.json").read_text())["files"]


def test_default_scenes_give_a_swin_stage_one_at_least_64_windows():
    size = SceneConfig().image_size
    assert (size // 4 // 7) ** 2 >= 64  # 4-pixel patches, 7x7 windows (Swin-T's)


def test_build_is_deterministic(built, tmp_path):
    again = build_scenes(TINY, cache_dir=tmp_path)
    assert _manifest_files(again) == _manifest_files(built)  # same bytes, file by file (SHA-256)
    other = build_scenes(SceneConfig(**{**TINY.as_dict(), "seed": 1}), cache_dir=tmp_path)
    assert other != again and _manifest_files(other) != _manifest_files(again)


def test_targets_are_consistent_with_pixels(built):
    for split, n in (("train", TINY.train_size), ("val", TINY.val_size)):
        ds = SceneDataset(built, split)
        assert len(ds) == n
        for i in range(n):
            image, t = ds[i]
            assert image.shape == (1, 64, 64) and image.dtype == torch.float32
            assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
            masks = t["masks"].bool()
            assert len(masks) >= 1 and masks.dtype == torch.bool and t["boxes"].dtype == torch.float32
            assert int(masks.sum(0).max()) == 1  # instances never share a pixel: occlusion removes covered pixels
            assert ((t["labels"] >= 1) & (t["labels"] <= 10)).all()
            for m, box, area in zip(masks, t["boxes"], t["area"]):
                ys, xs = torch.nonzero(m, as_tuple=True)
                assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                assert float(area) == float(m.sum())
                assert (image[0][m] * 255 > ITEM_THRESHOLD - 0.5).all()  # a mask holds item pixels only


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_annotations_are_coco_that_pycocotools_reads(built):
    coco_module = pytest.importorskip("pycocotools.coco")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = coco_module.COCO(str(built / "annotations" / "instances_val.json"))
    ann = coco.loadAnns(coco.getAnnIds())[0]
    ds = SceneDataset(built, "val")
    first = next(i for i, im in enumerate(ds.images) if im["id"] == ann["image_id"])
    k = [a["id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=ann["image_id"]))].index(ann["id"])
    assert np.array_equal(coco.annToMask(ann), ds[first][1]["masks"][k].numpy())
    assert {c["id"] for c in coco.loadCats(coco.getCatIds())} == set(range(1, 11))


def test_rle_round_trip_and_area():
    g = np.random.default_rng(0)
    for shape in ((1, 1), (5, 7), (16, 3)):
        for p in (0.0, 0.3, 1.0):
            m = g.random(shape) < p
            code = rle.encode(m)
            assert np.array_equal(rle.decode(code), m.astype(np.uint8))
            assert rle.area(code) == int(m.sum())


def test_ensure_reuses_a_complete_build(built, monkeypatch):
    def fail(*_):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(build_module, "_write_build", fail)
    assert ensure_scenes(TINY, cache_dir=built.parent.parent) == built
    assert "masks" not in load_scenes("val", TINY, cache_dir=built.parent.parent, masks=False)[0][1]


def test_a_failed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def boom(partial, *_):
        (partial / "annotations").mkdir(parents=True)
        (partial / "annotations" / "instances_train.json").write_text("{")
        raise KeyboardInterrupt  # a kill between two files

    monkeypatch.setattr(build_module, "_write_build", boom)
    with pytest.raises(KeyboardInterrupt):
        build_scenes(TINY, cache_dir=tmp_path)
    assert list((tmp_path / "scenes").iterdir()) == []


def test_partial_builds_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = build_module.scenes_folder(TINY, tmp_path)
    folder.parent.mkdir(parents=True)
    stale = folder.with_name(f".{folder.name}.partial-{int(dead.stdout)}")
    stale.mkdir()
    build_scenes(TINY, cache_dir=tmp_path)
    assert not stale.exists() and build_module.is_built(folder, TINY)


def test_bad_options_and_split_are_one_line_errors(built):
    with pytest.raises(ConfigError, match="max_items"):
        SceneConfig(min_items=3, max_items=2)
    with pytest.raises(ConfigError, match="background"):
        SceneConfig(background="noise")
    with pytest.raises(ConfigError, match="max_item_size"):
        SceneConfig(image_size=64, max_item_size=100)
    with pytest.raises(DataError, match="split"):
        SceneDataset(built, "test")
