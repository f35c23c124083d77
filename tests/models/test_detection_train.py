"""The reference detectors' training recipe (``vitcompress.train.detection``): resumable, seeded, saved."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_detection import tiny_config, tiny_scenes
from vitcompress.models.source import ModelSource
from vitcompress.train.detection import STATE_FILE, DetectorTrainRecipe, train_detector

RECIPE = DetectorTrainRecipe(epochs=1, batch_size=2, warmup_steps=1, checkpoint_every=1, lr=1e-3)  # 4 steps


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))[0]


def test_an_interrupted_run_ends_with_the_weights_of_an_uninterrupted_one(train, tmp_path, one_thread):
    whole = train_detector(tiny_config("swin"), train, tmp_path / "a", RECIPE)
    part = train_detector(tiny_config("swin"), train, tmp_path / "b", RECIPE, max_steps=2)
    assert torch.load(tmp_path / "b" / STATE_FILE, weights_only=True)["step"] == 2
    assert not (tmp_path / "b" / "model").exists()  # the recipe is not complete yet: a folder of step 2
    step2 = ModelSource(str(tmp_path / "b" / "model-step2")).load().state_dict()
    assert all(torch.equal(step2[k], v) for k, v in part.state_dict().items())
    resumed = train_detector(tiny_config("swin"), train, tmp_path / "b", RECIPE)
    a, b, p = whole.state_dict(), resumed.state_dict(), part.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # exact: same batches, same sampler draws, same optimizer state
    assert not all(torch.equal(a[k], p[k]) for k in a)
    loaded = ModelSource(str(tmp_path / "a" / "model")).load()  # the finished run's model folder
    assert all(torch.equal(a[k], v) for k, v in loaded.state_dict().items())
    assert json.loads((tmp_path / "a" / "recipe.json").read_text())["steps"] == 4
