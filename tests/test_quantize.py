"""``quantize_``, ``save`` and ``restore`` (vitcompress/quantize.py): calibration errors and the saved folder."""

import copy
import json
from pathlib import Path

import pytest
import torch

from vitcompress.config import Recipe, get_preset
from vitcompress.errors import CheckpointError, DataError, StateError
from vitcompress.models import load_model
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
    with pytest.raises(DataError, match=r"expected \(N, 1, 28, 28\), got \(\d+, 1, 32, 32\)"):
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


# ---- folders written before the layout change ---------------------------------------------------------
SAVED = Path(__file__).parent / "fixtures" / "saved_before_issue12"  # written by commit 3d3fc2f (see its README.md)


def _saved_input_and_logits():
    expected = json.loads((SAVED / "expected.json").read_text())
    x = torch.randn(*expected["input_shape"], generator=torch.Generator().manual_seed(expected["input_seed"]))
    return x, torch.tensor(expected["logits"])


def test_folder_saved_by_the_previous_layout_restores_bit_identically():
    x, logits = _saved_input_and_logits()
    model = restore(SAVED)  # rebuilt from source.json: a timm model and its kwargs
    assert recipe_of(model).name == "fqvit-w4a8"
    with torch.no_grad():
        assert torch.equal(model(x), logits)


def test_quantize_gives_the_numbers_of_the_previous_layout():
    # the same seeded model, recipe (the fqvit-w4a8 preset of the time, saved with the folder) and calibration
    # batch as the saved folder: PTQ reproduces its outputs bit for bit
    source = json.loads((SAVED / "source.json").read_text())
    torch.manual_seed(0)
    model = load_model(source["name"], **source["kwargs"])
    recipe = Recipe.load(SAVED / "recipe.json")
    quantize_(model, recipe, [torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(1))])
    x, logits = _saved_input_and_logits()
    with torch.no_grad():
        assert torch.equal(model(x), logits)


@pytest.mark.parametrize("builder", ["os:system", "vitcompress.methods.mixaq.step", "builtins:eval"])
def test_a_layout_names_only_a_vitcompress_builder(builder, tmp_path):
    model = build_zoo_model("vit-fmnist").eval()
    model.vitcompress_source = {"name": "vit-fmnist"}
    quantize_(model, get_preset("w8a8"), [_input(model, 4)])
    save(model, tmp_path / "m")
    assert not (tmp_path / "m" / "layout.json").exists()  # a plain model has no layout
    (tmp_path / "m" / "layout.json").write_text(json.dumps({"builder": builder}))
    with pytest.raises(CheckpointError, match="builder must be 'vitcompress.methods.<module>:<function>'"):
        restore(tmp_path / "m")
    save(model, tmp_path / "m")  # saving the plain model again removes the stale layout
    assert not (tmp_path / "m" / "layout.json").exists()


def test_nan_weights_are_named_before_quantizing():
    model = build_zoo_model("vit-fmnist").eval()
    with torch.no_grad():
        model.blocks[1].norm1.weight[0] = float("nan")
    with pytest.raises(DataError, match=r"^model: weight blocks\.1\.norm1\.weight holds 1 NaN/Inf value"):
        quantize_(model, get_preset("w8a8"), [_input(model, 2)])


def test_a_saved_recipe_with_a_syntax_error_is_one_line(tmp_path):
    model = build_zoo_model("vit-fmnist").eval()
    model.vitcompress_source = {"name": "vit-fmnist"}
    quantize_(model, get_preset("w8a8"), [_input(model, 2)])
    save(model, tmp_path / "m")
    (tmp_path / "m" / "manifest.json").unlink()  # a folder written before manifests, edited by hand
    (tmp_path / "m" / "recipe.json").write_text('{"name": "w8a8",')
    with pytest.raises(CheckpointError, match=r"recipe file .*recipe\.json: JSON syntax error at line 1, column 17"):
        restore(tmp_path / "m")
