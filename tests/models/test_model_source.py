"""``ModelSource`` and ``timm:NAME`` models: --model-args, checkpoints in training wrappers, one-line errors,
and the arguments recorded so that a saved folder restores without them (models/source.py, timm_args.py)."""

import argparse
import datetime
import json

import pytest
import torch
from safetensors.torch import save_file

from vitcompress.config import get_preset
from vitcompress.errors import CheckpointError, ConfigError, UnsupportedModelError
from vitcompress.models.checkpoint import read_state_dict
from vitcompress.models.registry import input_spec_of
from vitcompress.models.source import ModelSource
from vitcompress.models.timm_args import accepted_args, parse_model_args
from vitcompress.options import add_options, from_args
from vitcompress.quantize import quantize_, restore, save

TINY = ("embed_dim=32", "depth=1", "num_heads=2")  # a small deit_tiny: fast to build
SWIN = ("embed_dim=16", "depths=[1,1]", "num_heads=[1,2]", "window_size=4", "patch_size=2")


def _state(model):
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def _x(model, n=2):
    spec = input_spec_of(model)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(0))


# ---- key=value parsing -------------------------------------------------------------------------------------
def test_values_parse_as_json_else_stay_strings():
    args = parse_model_args(
        ["depths=[2,2,6,2]", "mlp_ratio=2.0", "depth=3", "global_pool=avg", "qkv_bias=false", "init_values=None"]
    )
    assert args == {
        "depths": [2, 2, 6, 2],
        "mlp_ratio": 2.0,
        "depth": 3,
        "global_pool": "avg",
        "qkv_bias": False,
        "init_values": None,
    }
    assert parse_model_args(['act_layer="gelu_tanh"', "x=a=b"]) == {"act_layer": "gelu_tanh", "x": "a=b"}


@pytest.mark.parametrize(
    "pairs, message",
    [
        (("depth",), r"model_args: 'depth' is not key=value"),
        (("=3",), r"model_args: '=3' is not key=value"),
        (("depth=2", "depth=3"), r"model_args: 'depth' is given twice"),
    ],
)
def test_malformed_pairs_are_one_line(pairs, message):
    with pytest.raises(ConfigError, match=message) as e:
        ModelSource("timm:deit_tiny_patch16_224", model_args=pairs)
    assert "\n" not in str(e.value)


def test_a_shorthand_and_the_same_model_arg_disagreeing_is_refused():
    with pytest.raises(ConfigError, match=r"num_classes is given twice: 10 and model_args num_classes=5"):
        ModelSource("timm:deit_tiny_patch16_224", num_classes=10, model_args=("num_classes=5",))
    same = ModelSource("timm:deit_tiny_patch16_224", num_classes=5, model_args=("num_classes=5",))
    assert same.timm_kwargs() == {"num_classes": 5}


@pytest.mark.parametrize(
    "kwargs",
    [{"num_classes": 3}, {"img_size": 64}, {"model_args": ("depth=2",)}, {"in_chans": 3}],
)
def test_timm_only_options_are_refused_for_a_zoo_name(kwargs):
    with pytest.raises(ConfigError, match=r"only for timm:<name> models; 'vit-fmnist' defines its own"):
        ModelSource("vit-fmnist", **kwargs)
    ModelSource("vit-fmnist", checkpoint="w.safetensors")  # a zoo model takes other weights


def test_timm_only_options_are_refused_for_hf_and_saved_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint, num_classes: only for timm:<name> models"):
        ModelSource(f"hf:{tmp_path}", checkpoint="w.pt", num_classes=3)
    with pytest.raises(ConfigError, match=r"model_args: only for timm:<name> models"):
        ModelSource(str(tmp_path), model_args=("depth=2",))


def test_model_args_is_a_command_line_option():
    parser = argparse.ArgumentParser()
    add_options(parser, ModelSource)
    args = parser.parse_args(["--model", "timm:deit_tiny_patch16_224", "--model-args", "depth=2", "mlp_ratio=2.0"])
    source = from_args(ModelSource, args)
    assert source.model_args == ("depth=2", "mlp_ratio=2.0")
    assert source.timm_kwargs() == {"depth": 2, "mlp_ratio": 2.0}


# ---- building: model args reach timm, unknown keys are named ---------------------------------------------
def test_model_args_reach_create_model():
    model = ModelSource(
        "timm:swin_tiny_patch4_window7_224", num_classes=4, img_size=32, in_chans=1, model_args=SWIN
    ).load()
    assert [len(s.blocks) for s in model.layers] == [1, 1] and model.embed_dim == 16
    assert input_spec_of(model).img_size == 32 and input_spec_of(model).in_chans == 1
    assert model.num_classes == 4 and not model.training
    assert model(_x(model)).shape == (2, 4)


def test_unknown_model_arg_names_it_and_the_accepted_ones():
    source = ModelSource("timm:deit_tiny_patch16_224", model_args=("depthh=2",))
    with pytest.raises(ConfigError) as e:
        source.load()
    message = str(e.value)
    assert "\n" not in message
    assert "has no argument 'depthh'" in message and "(VisionTransformer)" in message
    assert "depth, num_heads" in message and "mlp_ratio" in message


def test_accepted_args_follow_kwargs_to_the_base_class():
    name, names, open_ended = accepted_args("deit_tiny_distilled_patch16_224")  # __init__(*args, **kwargs)
    assert name == "VisionTransformerDistilled" and "embed_dim" in names and not open_ended
    assert "pretrained" not in names and "device" not in names and "self" not in names


def test_a_value_timm_cannot_build_with_is_one_line():
    with pytest.raises(ConfigError, match=r"model_args: timm.create_model\('swin_tiny_patch4_window7_224'") as e:
        ModelSource("timm:swin_tiny_patch4_window7_224", model_args=("depths=[1,1]", "num_heads=oops")).load()
    assert "\n" not in str(e.value)


def test_unknown_timm_name():
    with pytest.raises(UnsupportedModelError, match="timm has no model 'not_a_model'"):
        ModelSource("timm:not_a_model").load()


# ---- checkpoints: wrappers, DDP prefix, mismatches -------------------------------------------------------
@pytest.mark.parametrize("wrapper", [None, "state_dict", "model", "state_dict_ema", "model_ema"])
def test_training_checkpoint_wrappers_and_ddp_prefix(tmp_path, wrapper):
    ref = ModelSource("timm:deit_tiny_patch16_224", num_classes=3, img_size=32, model_args=TINY).load()
    state = {f"module.{k}": v for k, v in _state(ref).items()}  # saved from a DistributedDataParallel model
    obj = state if wrapper is None else {wrapper: state, "epoch": 7, "args": argparse.Namespace(lr=1e-3, model="x")}
    path = tmp_path / "ckpt.pth.tar"
    torch.save(obj, path)
    again = ModelSource(
        "timm:deit_tiny_patch16_224", checkpoint=str(path), num_classes=3, img_size=32, model_args=TINY
    ).load()
    x = _x(ref)
    assert torch.equal(ref(x), again(x))


def test_trained_weights_win_over_their_ema_copy(tmp_path):
    a, b = {"w": torch.zeros(2)}, {"w": torch.ones(2)}
    torch.save({"state_dict_ema": b, "state_dict": a}, tmp_path / "c.pt")
    assert torch.equal(read_state_dict(tmp_path / "c.pt")["w"], a["w"])


def test_a_checkpoint_of_pickled_objects_is_refused_in_one_line(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "when": datetime.timedelta(days=1)}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"c.pt is corrupt or unreadable: .*Unsupported global") as e:
        read_state_dict(tmp_path / "c.pt")
    assert "\n" not in str(e.value)


def test_a_checkpoint_that_does_not_fit_names_the_first_key_and_both_shapes(tmp_path):
    trained = ModelSource("timm:deit_tiny_patch16_224", num_classes=10, img_size=64, model_args=TINY).load()
    path = tmp_path / "deit64.safetensors"
    save_file(_state(trained), str(path))
    with pytest.raises(CheckpointError) as e:  # forgot --img-size 64
        ModelSource("timm:deit_tiny_patch16_224", checkpoint=str(path), num_classes=10, model_args=TINY).load()
    assert str(e.value) == (
        f"checkpoint {path} does not fit the model: key 'pos_embed' has shape (1, 17, 32), "
        "the model expects (1, 197, 32) (check img_size or patch_size)"
    )
    with pytest.raises(
        CheckpointError, match=r"key 'head.weight' has shape \(10, 32\), the model expects \(1000, 32\)"
    ):
        ModelSource("timm:deit_tiny_patch16_224", checkpoint=str(path), img_size=64, model_args=TINY).load()


def test_missing_and_unexpected_keys_are_named(tmp_path):
    model = ModelSource("timm:deit_tiny_patch16_224", num_classes=3, img_size=32, model_args=TINY).load()
    state = _state(model)
    del state["norm.weight"], state["norm.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    source = ModelSource(
        "timm:deit_tiny_patch16_224", checkpoint=str(path), num_classes=3, img_size=32, model_args=TINY
    )
    with pytest.raises(CheckpointError) as e:
        source.load()
    assert str(e.value) == (
        f"checkpoint {path} does not fit the model: missing keys 'norm.weight', 'norm.bias'; "
        "unexpected key 'extra.weight'"
    )


# ---- recorded arguments: a saved folder restores without them ---------------------------------------------
def test_saved_folder_restores_without_the_model_args(tmp_path):
    source = ModelSource("timm:swin_tiny_patch4_window7_224", num_classes=4, img_size=32, in_chans=1, model_args=SWIN)
    model = source.load()
    x = _x(model, 4)
    quantize_(model, get_preset("w8a8"), [x])
    save(model, tmp_path / "job" / "model")
    recorded = json.loads((tmp_path / "job" / "model" / "source.json").read_text())
    assert recorded == {
        "name": "timm:swin_tiny_patch4_window7_224",
        "kwargs": {
            "embed_dim": 16,
            "depths": [1, 1],
            "num_heads": [1, 2],
            "window_size": 4,
            "patch_size": 2,
            "num_classes": 4,
            "in_chans": 1,
            "img_size": 32,
        },
    }
    again = ModelSource(str(tmp_path / "job")).load()  # the compress output folder, no extra flags
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert torch.equal(restore(tmp_path / "job" / "model")(x), again(x))


def test_an_hf_folder_named_without_its_prefix_is_pointed_at_hf(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=rf"{tmp_path} looks like a Hugging Face folder: name it hf:"):
        ModelSource(str(tmp_path)).load()


def test_python_object_arguments_build_but_are_not_recorded(caplog):
    from torch import nn

    from vitcompress.models import load_model

    model = load_model(
        "timm:deit_tiny_patch16_224", img_size=32, embed_dim=32, depth=1, num_heads=2, norm_layer=nn.LayerNorm
    )
    assert not hasattr(model, "vitcompress_source") and "are not JSON" in caplog.text
