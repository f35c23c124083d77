"""``hf:DIR``: Hugging Face ViT / DeiT / Swin image classifiers converted to timm (models/hf.py).

The models are built from small configs with random weights and written with ``save_pretrained``:
nothing is downloaded. Tolerance of the logits: max |HF - converted| <= 1e-4 (float32; the two compute
the same operations in another order, observed differences are <= 1e-7).
"""

import json
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from vitcompress.config import get_preset  # noqa: E402
from vitcompress.errors import CheckpointError, UnsupportedModelError  # noqa: E402
from vitcompress.models.hf import preprocess_from_processor  # noqa: E402
from vitcompress.models.registry import input_spec_of  # noqa: E402
from vitcompress.models.source import ModelSource  # noqa: E402
from vitcompress.quantize import quantize_, restore, save  # noqa: E402

ATOL = 1e-4
VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8, num_labels=5)


def _vit(**kw):
    return transformers.ViTForImageClassification(transformers.ViTConfig(**{**VIT, "intermediate_size": 37, **kw}))


def _deit(teacher=True, **kw):
    cls = transformers.DeiTForImageClassificationWithTeacher if teacher else transformers.DeiTForImageClassification
    return cls(transformers.DeiTConfig(**{**VIT, "intermediate_size": 64, **kw}))


def _swin(**kw):
    config = dict(embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 4], image_size=32, patch_size=2, window_size=4)
    return transformers.SwinForImageClassification(transformers.SwinConfig(**{**config, "num_labels": 5, **kw}))


def _saved(model, folder, seed=0):
    """Perturb the (partly zero/one-initialised) weights so that every tensor matters, then save_pretrained."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    model.eval().save_pretrained(folder)
    return model


def _x(model, n=3):
    spec = input_spec_of(model)
    return torch.randn(n, spec.in_chans, spec.img_size, spec.img_size, generator=torch.Generator().manual_seed(1))


CASES = {
    "vit": lambda: _vit(),
    "vit-no-qkv-bias-eps-1e-6-3-labels": lambda: _vit(qkv_bias=False, layer_norm_eps=1e-6, num_labels=3),
    "vit-1-channel-gelu-tanh": lambda: _vit(num_channels=1, hidden_act="gelu_new"),
    "deit-distilled": lambda: _deit(teacher=True),
    "deit-class-head": lambda: _deit(teacher=False),
    "swin": lambda: _swin(),
    "swin-eps-1e-6": lambda: _swin(image_size=64, patch_size=4, layer_norm_eps=1e-6),
    "swin-window-7": lambda: _swin(embed_dim=8, image_size=56, window_size=7, mlp_ratio=2.0, qkv_bias=False),
}
TIMM_CLASS = {
    "vit": "VisionTransformer",
    "deit-distilled": "VisionTransformerDistilled",
    "deit-class-head": "VisionTransformer",
    "swin": "SwinTransformer",
}


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_the_transformers_model(case, tmp_path):
    hf = _saved(CASES[case](), tmp_path)
    model = ModelSource(f"hf:{tmp_path}").load()
    assert type(model).__name__ == TIMM_CLASS[case if case in TIMM_CLASS else case.split("-")[0]]
    assert not model.training and model.num_classes == hf.config.num_labels
    x = _x(model)
    with torch.no_grad():
        expected, got = hf(pixel_values=x).logits, model(x)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= ATOL


def test_the_distillation_token_of_a_class_head_deit_is_a_register_token(tmp_path):
    _saved(_deit(teacher=False), tmp_path)
    model = ModelSource(f"hf:{tmp_path}").load()
    assert model.num_prefix_tokens == 2 and model.reg_token is not None and model.global_pool == "token"


def test_sharded_and_bin_weights(tmp_path):
    hf = _vit()
    _saved(hf, tmp_path / "sharded")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    x = _x(ModelSource(f"hf:{tmp_path / 'sharded'}").load())
    with torch.no_grad():
        assert (ModelSource(f"hf:{tmp_path / 'sharded'}").load()(x) - hf(pixel_values=x).logits).abs().max() <= ATOL
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "config.json").write_text((tmp_path / "sharded" / "config.json").read_text())
    torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")  # the in-memory names of transformers 5
    with torch.no_grad():
        assert (ModelSource(f"hf:{bin_dir}").load()(x) - hf(pixel_values=x).logits).abs().max() <= ATOL


# ---- preprocessing -------------------------------------------------------------------------------------------
def test_preprocessor_config_is_attached(tmp_path):
    _saved(_deit(), tmp_path)
    transformers.DeiTImageProcessor(
        size={"height": 36, "width": 36},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
        resample=3,
    ).save_pretrained(tmp_path)
    model = ModelSource(f"hf:{tmp_path}").load()
    pre = model.vitcompress_preprocess
    assert pre["input_size"] == (3, 32, 32)
    assert pre["mean"] == pytest.approx((0.485, 0.456, 0.406)) and pre["std"] == pytest.approx((0.229, 0.224, 0.225))
    assert pre["crop_pct"] == pytest.approx(32 / 36) and pre["crop_mode"] == "squash"
    assert pre["interpolation"] == "bicubic"


def test_processor_mapping_rescale_shortest_edge_and_crop_pct():
    spec = {"image_size": 224, "num_channels": 3}
    pre = preprocess_from_processor(
        {"do_rescale": False, "image_mean": [127.5], "image_std": [127.5], "size": {"shortest_edge": 256}}, spec
    )
    assert pre["mean"] == pytest.approx((0.5,) * 3) and pre["std"] == pytest.approx((0.5,) * 3)
    assert pre["crop_mode"] == "center" and pre["crop_pct"] == 1.0 and pre["interpolation"] == "bilinear"
    pre = preprocess_from_processor({"crop_pct": 0.9, "size": {"shortest_edge": 224}, "resample": 3}, spec)
    assert pre["crop_pct"] == 0.9 and pre["interpolation"] == "bicubic"
    pre = preprocess_from_processor({"do_normalize": False, "size": 224}, {"image_size": 32, "num_channels": 1})
    assert pre == {
        "input_size": (1, 32, 32),
        "mean": (0.0,),
        "std": (1.0,),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "bilinear",
    }


def test_without_preprocessor_config_transformers_defaults_are_used(tmp_path):
    _saved(_vit(), tmp_path)
    pre = ModelSource(f"hf:{tmp_path}").load().vitcompress_preprocess
    assert pre["mean"] == pytest.approx((0.5, 0.5, 0.5)) and pre["input_size"] == (3, 32, 32)


# ---- quantize, save, restore, export ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["vit", "deit-distilled", "swin"])
def test_w8a8_save_restore_without_the_folder_and_transformers(case, tmp_path, monkeypatch):
    _saved(CASES[case](), tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.4] * 3, "resample": 3}))
    model = ModelSource(f"hf:{tmp_path / 'hf'}").load()
    x = _x(model, 8)
    with torch.no_grad():
        float_logits = model(x)
    quantize_(model, get_preset("w8a8"), [x])
    with torch.no_grad():
        q = model(x)
    assert (q - float_logits).abs().max() < 0.1 * float_logits.abs().max() + 1e-3  # 8 bit stays close
    save(model, tmp_path / "job" / "model")
    source = json.loads((tmp_path / "job" / "model" / "source.json").read_text())
    assert source["name"] == f"hf:{(tmp_path / 'hf').resolve()}" and source["hf"]["num_labels"] == 5
    for path in (tmp_path / "hf").iterdir():  # the HF folder is gone, and transformers with it
        path.unlink()
    monkeypatch.setitem(sys.modules, "transformers", None)
    again = ModelSource(str(tmp_path / "job")).load()
    with torch.no_grad():
        assert torch.equal(again(x), q)
    assert again.vitcompress_preprocess == model.vitcompress_preprocess
    assert again.vitcompress_preprocess["mean"] == pytest.approx((0.4,) * 3)
    assert restore(tmp_path / "job" / "model").vitcompress_source == model.vitcompress_source


@pytest.mark.parametrize("case", ["vit", "deit-class-head", "swin"])
def test_w8a8_exports_to_onnx(case, tmp_path):
    pytest.importorskip("onnxruntime")
    from vitcompress.export import export_onnx

    _saved(CASES[case](), tmp_path / "hf")
    model = ModelSource(f"hf:{tmp_path / 'hf'}").load()
    x = _x(model, 8)
    quantize_(model, get_preset("w8a8"), [x])
    report = export_onnx(model, tmp_path / "m.onnx", precision="int8")
    assert (tmp_path / "m.onnx").is_file() and report.precision == "int8"


# ---- bad input: one line, naming the folder --------------------------------------------------------------
def test_missing_transformers_says_how_to_install(tmp_path, monkeypatch):
    _saved(_vit(), tmp_path)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UnsupportedModelError, match=r"needs the transformers package: pip install vitcompress\[hf\]"):
        ModelSource(f"hf:{tmp_path}").load()


def test_not_a_model_folder(tmp_path):
    with pytest.raises(CheckpointError, match=rf"hf:{tmp_path} is not a Hugging Face model folder: config.json"):
        ModelSource(f"hf:{tmp_path}").load()
    with pytest.raises(CheckpointError, match="is not a folder"):
        ModelSource(f"hf:{tmp_path / 'nope'}").load()


def test_no_weights(tmp_path):
    _vit().config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=rf"hf:{tmp_path} has no weights: model.safetensors is missing"):
        ModelSource(f"hf:{tmp_path}").load()


def test_unsupported_model_type_and_architecture(tmp_path):
    transformers.BeitConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "a")
    with pytest.raises(UnsupportedModelError, match=r"model_type 'beit' is not supported; hf: takes \['deit'"):
        ModelSource(f"hf:{tmp_path / 'a'}").load()
    transformers.ViTModel(transformers.ViTConfig(**VIT)).save_pretrained(tmp_path / "b")
    with pytest.raises(UnsupportedModelError, match=r"\['ViTModel'\] is not an image classifier") as e:
        ModelSource(f"hf:{tmp_path / 'b'}").load()
    assert f"hf:{(tmp_path / 'b').resolve()}" in str(e.value)


def test_swin_whose_windows_need_padding_is_refused(tmp_path):
    _saved(_swin(image_size=28), tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"stage 0 has a 14x14 feature map, not whole 4x4 windows") as e:
        ModelSource(f"hf:{tmp_path}").load()
    assert "\n" not in str(e.value)


def test_weights_that_do_not_fit_name_the_hf_key(tmp_path):
    from safetensors.torch import load_file, save_file

    _saved(_vit(), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["classifier.weight"] = torch.zeros(7, 32)
    state["vit.encoder.layer.0.extra.weight"] = torch.zeros(1)
    del state["vit.layernorm.bias"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        ModelSource(f"hf:{tmp_path}").load()
    assert str(e.value) == (
        f"hf:{tmp_path.resolve()} does not fit the model: key 'head.weight' (from 'classifier.weight') has shape "
        "(7, 32), the model expects (5, 32) (check num_classes)"
    )
    state["classifier.weight"] = torch.zeros(5, 32)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        ModelSource(f"hf:{tmp_path}").load()
    assert str(e.value).endswith(
        "does not fit the model: missing key 'norm.bias'; unexpected key 'vit.encoder.layer.0.extra.weight'"
    )
