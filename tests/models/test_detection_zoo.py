"""The reference detectors of the zoo (``swin-det-scenes``, ``vit-det-scenes``): listed, trained by ``zoo train``,
loaded by name once trained, a one-line error naming the train command before."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_detection import tiny_config, tiny_scenes
from vitcompress.cli import main
from vitcompress.errors import CheckpointError
from vitcompress.models import load_model, zoo
from vitcompress.models.zoo import DETECTOR_ZOO, DetectorZooEntry
from vitcompress.train import detection

NAMES = ["swin-det-scenes", "vit-det-scenes"]


def test_zoo_list_shows_the_detectors_as_not_trained(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)  # an empty zoo folder: nothing trained
    assert main(["zoo", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for name in NAMES:
        assert rows[name]["trained"] is False
        assert rows[name]["train_command"] == f"vitcompress zoo train {name}"
    assert main(["zoo", "list"]) == 0
    assert "not trained: vitcompress zoo train swin-det-scenes" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_loading_an_untrained_detector_is_one_line_naming_the_command(name, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path)
    with pytest.raises(CheckpointError, match=f"not trained yet: train it with `vitcompress zoo train {name}`"):
        load_model(name)
    assert main(["eval", "--model", name, "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"vitcompress zoo train {name}" in err


def test_zoo_train_trains_resumably_then_lists_and_loads_the_detector(monkeypatch, tmp_path, capsys, one_thread):
    train, val = tiny_scenes(tmp_path / "cache")
    monkeypatch.setattr(zoo, "ZOO_DIR", tmp_path / "zoo")
    tiny = DetectorZooEntry("swin-det-scenes", tiny_config("swin").as_dict(), "tiny")
    monkeypatch.setitem(DETECTOR_ZOO, "swin-det-scenes", tiny)
    monkeypatch.setattr("vitcompress.data.scenes.load_scenes", lambda split, **kw: train if split == "train" else val)
    recipe = detection.DetectorTrainRecipe(epochs=1, batch_size=2, warmup_steps=1, checkpoint_every=1)  # 4 steps
    monkeypatch.setattr(detection, "DetectorTrainRecipe", lambda: recipe)
    state = tmp_path / "state"
    args = ["zoo", "train", "swin-det-scenes", "--state-dir", str(state)]
    assert main([*args, "--max-steps", "2"]) == 0  # a part: a checkpoint, no zoo folder yet
    assert json.loads(capsys.readouterr().out)["complete"] is False
    assert not (tmp_path / "zoo" / "swin-det-scenes").exists() and (state / "model-step2").is_dir()
    assert main(args) == 0  # continues from step 2 to the end
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["train_steps"] == 4 and 0 <= manifest["bbox_map"] <= 100 and manifest["val_images"] == len(val)
    assert (tmp_path / "zoo" / "swin-det-scenes.json").is_file()
    model = load_model("swin-det-scenes")
    trained = torch.load(state / detection.STATE_FILE, weights_only=True)["model"]
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())  # the run's final weights
    assert main(["zoo", "list", "--json"]) == 0
    row = {r["name"]: r for r in json.loads(capsys.readouterr().out)}["swin-det-scenes"]
    assert row["trained"] is True and row["bbox_map"] == manifest["bbox_map"]


def test_zoo_train_options_checked_before_any_work(tmp_path, capsys):
    assert main(["zoo", "train", "vit-fmnist", "--max-steps", "2", "--state-dir", str(tmp_path / "s")]) == 2
    assert "max_steps: only for the reference detectors" in capsys.readouterr().err
    (tmp_path / "s").mkdir()
    assert main(["zoo", "train", "swin-det-scenes", "--no-resume", "--state-dir", str(tmp_path / "s")]) == 2
    assert "existing state folder" in capsys.readouterr().err
    assert main(["zoo", "train", "swin-det-scenes", "--max-steps", "0"]) == 2
    assert "max_steps" in capsys.readouterr().err


SHIPPED = [n for n in NAMES if DETECTOR_ZOO[n].manifest.is_file()]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_detector_loads_and_detects(name, one_thread):
    from vitcompress.data.scenes import load_scenes
    from vitcompress.eval.detection import evaluate_detection

    manifest = json.loads(DETECTOR_ZOO[name].manifest.read_text())
    model = load_model(name)
    assert sum(p.numel() for p in model.parameters()) == manifest["params"]
    assert manifest["bbox_map"] >= 20 and manifest["train_steps"] == 2000  # the complete recipe, a useful detector
    metrics = evaluate_detection(model, load_scenes("val", masks=False), limit=16, masks=False)
    assert metrics.bbox_map >= 15, metrics.bbox_map  # random weights score 0; measured 40.3 (Swin), 40.0 (ViT)


@pytest.mark.slow  # a few minutes: the 500 val scenes
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_detector_reproduces_its_manifest(name, one_thread):
    from vitcompress.data.scenes import load_scenes
    from vitcompress.eval.task import evaluate_model

    manifest = json.loads(DETECTOR_ZOO[name].manifest.read_text())
    metrics = evaluate_model(load_model(name), load_scenes("val", masks=False))
    assert metrics.images == manifest["val_images"] == 500
    assert abs(metrics.bbox_map - manifest["bbox_map"]) <= 0.1 and abs(metrics.segm_map - manifest["segm_map"]) <= 0.1
