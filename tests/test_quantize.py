"""``quantize_``, ``save`` and ``restore`` (vitcompress/quantize.py): calibration errors and the saved folder."""

import copy

import pytest
import torch

from vitcompress.config import get_preset
from vitcompress.errors import CheckpointError, DataError, StateError
from vitcompress.models.zoo import build_zoo_model
from vitcompress.quantize import quantize_, recipe_of, restore, save


def _input(model, n=2, seed=0):
    size = model.patch_embed.img_size[0]
    return torch.randn(n, model.patch_embed.proj.in_channels, size, size, generator=torch.Generator().manual_seed(seed))


def test_calibration_errors():
    model = build_zoo_model("vit-fmnist")
    with pytest.raises(DataError, match="empty"):
        quantize_(copy.deepcopy(model), get_preset("w8a8"), [])
    bad = torch.zeros(2, 1, 28, 28)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(DataError, match="batch 0"):
        quantize_(copy.deepcopy(model), get_preset("w8a8"), [bad])
    with pytest.raises(DataError, match=r"expected \(N, 1, 28, 28\), got \(2, 1, 32, 32\)"):
        quantize_(copy.deepcopy(model), get_preset("w8a8"), [torch.zeros(2, 1, 32, 32)])
    with pytest.raises(StateError, match="PTQ first|quantize_"):
        recipe_of(model)


@pytest.mark.parametrize("name", ["vit-fmnist", "swin-fmnist"])
def test_save_restore_round_trip(name, tmp_path):
    model = build_zoo_model(name).eval()
    model.vitcompress_source = {"name": name}
    x = _input(model, 8)
    quantize_(model, get_preset("fqvit-w4a8"), [x])
    save(model, tmp_path / "m")
    again = restore(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert recipe_of(again) == recipe_of(model)


def test_restore_onto_other_architecture_names_mismatch(tmp_path):
    model = build_zoo_model("vit-fmnist").eval()
    quantize_(model, get_preset("w8a8"), [_input(model, 4)])
    save(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match=r"model.safetensors.*key"):
        restore(tmp_path / "m", model=build_zoo_model("swin-fmnist"))
