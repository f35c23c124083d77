"""Zoo training: a reference-model recipe in epochs runs through the generic trainer, resumable bit for bit."""

import dataclasses
import gzip
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

import vitcompress.train.trainer as trainer
from vitcompress.data import InputSpec, load_dataset
from vitcompress.errors import ConfigError
from vitcompress.models.zoo import ZOO, TrainRecipe
from vitcompress.train.trainer import TrainingInterrupted
from vitcompress.train.zoo import recipe_config, smoothed_cross_entropy, train_with_recipe, train_zoo_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_fmnist(root: Path, n: int = 64) -> None:
    rng = np.random.default_rng(0)
    for stem, arr in (
        ("train-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
        ("train-labels-idx1-ubyte", np.arange(n) % 10),
        ("t10k-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
        ("t10k-labels-idx1-ubyte", np.arange(n) % 10),
    ):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / f"{stem}.gz", "wb") as f:
            f.write(header + arr.astype(">u1").tobytes())


def _tiny():
    torch.manual_seed(0)
    return VisionTransformer(
        img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=1, num_heads=2, drop_path_rate=0.1
    )


def test_recipe_in_epochs_becomes_trainer_steps():
    # the shipped vit-fmnist recipe on the 60,000 Fashion-MNIST training images: 468 full batches of 128
    cfg = recipe_config(ZOO["vit-fmnist"].recipe, 60_000)
    assert (cfg.steps, cfg.batch_size, cfg.warmup_steps, cfg.checkpoint_every) == (25 * 468, 128, 468, 468)
    assert (cfg.lr, cfg.min_lr, cfg.weight_decay, cfg.grad_clip, cfg.seed) == (1e-3, 1e-5, 0.05, 1.0, 0)
    cfg = recipe_config(TrainRecipe(epochs=3, batch_size=16, warmup_epochs=0.5, seed=7), 70)
    assert (cfg.steps, cfg.warmup_steps, cfg.checkpoint_every, cfg.seed) == (12, 2, 4, 7)
    with pytest.raises(ConfigError, match="batch_size 16 exceeds"):
        recipe_config(TrainRecipe(epochs=1, batch_size=16), 8)


def test_loss_is_label_smoothed_cross_entropy():
    model = _tiny().eval()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    loss, logs = smoothed_cross_entropy(0.1)(model, x, y)
    assert torch.equal(loss, F.cross_entropy(model(x), y, label_smoothing=0.1))
    assert logs == {"loss": loss.item()}


def test_resume_after_a_kill_at_an_epoch_checkpoint_is_bit_identical(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    recipe = TrainRecipe(epochs=3, batch_size=16, warmup_epochs=0.5)  # 4 steps per epoch, 12 in all

    def data():  # augmented, as zoo training uses it (random crop + flip from the dataset's generator)
        return load_dataset(InputSpec(28, 1), "train", tmp_path, augment=True)

    straight = _tiny()
    out = train_with_recipe(straight, data(), recipe, tmp_path / "a")
    assert out["steps"] == 12 and not out["interrupted"]

    class Killed(Exception):
        pass

    original = trainer._save

    def save_then_die(path, model, opt, step, *args):
        original(path, model, opt, step, *args)
        raise Killed(step)  # the process dies right after the first epoch's checkpoint

    monkeypatch.setattr(trainer, "_save", save_then_die)
    with pytest.raises(Killed, match="4"):
        train_with_recipe(_tiny(), data(), recipe, tmp_path / "b")
    monkeypatch.setattr(trainer, "_save", original)
    resumed = _tiny()  # a new process: fresh model and dataset, state from the folder
    out = train_with_recipe(resumed, data(), recipe, tmp_path / "b", resume=True)
    assert out["steps"] == 12
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_zoo_model_writes_checkpoint_and_manifest(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    tiny = TrainRecipe(epochs=1, batch_size=32, warmup_epochs=0.5)  # the real architecture, 2 steps
    monkeypatch.setitem(ZOO, "vit-fmnist", dataclasses.replace(ZOO["vit-fmnist"], recipe=tiny))
    manifest = train_zoo_model("vit-fmnist", tmp_path / "state", data_root=str(tmp_path), out_dir=tmp_path / "out")
    assert (tmp_path / "out" / "vit-fmnist.safetensors").is_file()
    assert (tmp_path / "state" / "trainer_state.pt").is_file()
    assert json.loads((tmp_path / "out" / "vit-fmnist.json").read_text()) == manifest
    assert manifest["train_steps"] == 2 and manifest["recipe"]["epochs"] == 1 and manifest["test_images"] == 64


def test_train_zoo_model_stopped_by_sigterm_writes_no_checkpoint(tmp_path, monkeypatch):
    _fake_fmnist(tmp_path)
    monkeypatch.setitem(ZOO, "vit-fmnist", dataclasses.replace(ZOO["vit-fmnist"], recipe=TrainRecipe(2, 32)))
    original = trainer.warmup_cosine

    def sigterm_in_first_step(*args):  # SIGTERM arrives during the first step (the learning rate of each step)
        os.kill(os.getpid(), signal.SIGTERM)
        monkeypatch.setattr(trainer, "warmup_cosine", original)
        return original(*args)

    monkeypatch.setattr(trainer, "warmup_cosine", sigterm_in_first_step)
    with pytest.raises(TrainingInterrupted, match="step 1.*run the same command again"):
        train_zoo_model("vit-fmnist", tmp_path / "state", data_root=str(tmp_path), out_dir=tmp_path / "out")
    assert (tmp_path / "state" / "trainer_state.pt").is_file() and not (tmp_path / "out").exists()
