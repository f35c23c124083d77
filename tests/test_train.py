import contextlib
import gzip
from pathlib import Path

import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer

from vitcompress.data import InputSpec, load_dataset
from vitcompress.models.zoo import TrainRecipe
from vitcompress.train.classifier import train_classifier
from vitcompress.train.schedule import warmup_cosine


def _fake_fmnist(root: Path, n: int = 64) -> None:
    rng = np.random.default_rng(0)
    for stem, arr in (("train-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                      ("train-labels-idx1-ubyte", np.arange(n) % 10)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(root / f"{stem}.gz", "wb") as f:
            f.write(header + arr.astype(">u1").tobytes())


def _tiny():
    torch.manual_seed(0)
    return VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10, embed_dim=16, depth=1,
                             num_heads=2)


def test_schedule_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == 0.1
    assert warmup_cosine(9, 100, 10, 1.0, 0.0) == 1.0
    assert abs(warmup_cosine(55, 100, 10, 1.0, 0.0) - 0.5) < 1e-12
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == 0.1


def test_resume_from_epoch_checkpoint_is_bit_identical(tmp_path):
    _fake_fmnist(tmp_path)
    data = load_dataset(InputSpec(28, 1), "train", tmp_path, augment=True)
    recipe = TrainRecipe(epochs=3, batch_size=16, warmup_epochs=0.5)
    straight = _tiny()
    train_classifier(straight, data, recipe, tmp_path / "a")

    import vitcompress.train.classifier as trainer

    class Stop(Exception):
        pass

    original = trainer._save_state
    calls = {"n": 0}

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:  # killed right after the first epoch's checkpoint
            raise Stop

    trainer._save_state = save_then_die
    try:
        with contextlib.suppress(Stop):
            train_classifier(_tiny(), data, recipe, tmp_path / "b")
    finally:
        trainer._save_state = original
    resumed = _tiny()
    train_classifier(resumed, data, recipe, tmp_path / "b", resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
