import json

import pytest
import torch
from safetensors.torch import save_file

from vitcompress.data import load_dataset
from vitcompress.errors import CheckpointError, UnsupportedModelError
from vitcompress.eval import evaluate
from vitcompress.models import input_spec_of, list_models, load_model
from vitcompress.models.zoo import ZOO, build_zoo_model

shipped = [n for n in ZOO if ZOO[n].checkpoint.is_file() and ZOO[n].manifest.is_file()]


def test_zoo_architectures_meet_the_brief():
    vit, swin = build_zoo_model("vit-fmnist"), build_zoo_model("swin-fmnist")
    assert type(vit).__name__ == "VisionTransformer" and type(swin).__name__ == "SwinTransformer"
    assert vit.embed_dim >= 96 and len(vit.blocks) >= 6 and vit.blocks[0].attn.num_heads >= 3
    assert vit.patch_embed.patch_size[0] in (2, 4)
    assert tuple(len(s.blocks) for s in swin.layers) == (2, 2, 6, 2)
    grid = swin.patch_embed.grid_size[0]
    window = swin.layers[0].blocks[0].window_size[0]
    assert (grid // window) ** 2 >= 16  # MixA-Q needs windows to rank
    assert swin.layers[0].blocks[1].shift_size[0] > 0  # shifted windows


def test_unknown_name_lists_known_and_timm_form():
    with pytest.raises(UnsupportedModelError, match=r"vit-fmnist.*timm:<name>"):
        load_model("resnet-fmnist")


def test_timm_model_with_local_safetensors(tmp_path):
    ref = load_model("timm:vit_tiny_patch16_224", num_classes=3, img_size=32)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    again = load_model("timm:vit_tiny_patch16_224", checkpoint=path, num_classes=3, img_size=32)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(ref(x), again(x))


def test_torch_checkpoint_is_read_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled')",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_model("timm:vit_tiny_patch16_224", checkpoint=path, num_classes=3, img_size=32)


def test_truncated_and_mismatched_checkpoints(tmp_path):
    model = build_zoo_model("vit-fmnist")
    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(good))
    bad = tmp_path / "trunc.safetensors"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="trunc.safetensors"):
        load_model("vit-fmnist", checkpoint=bad)
    with pytest.raises(CheckpointError, match=r"mismatch|shape|missing|unexpected") as e:
        load_model("swin-fmnist", checkpoint=good)
    assert "good.safetensors" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("key, bad", [("blocks.0.attn.qkv.weight", float("nan")), ("pos_embed", float("-inf"))])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_non_finite_weights_in_a_checkpoint_are_refused_naming_the_tensor(tmp_path, key, bad, suffix):
    state = {k: v.detach().contiguous().clone() for k, v in build_zoo_model("vit-fmnist").state_dict().items()}
    state[key].view(-1)[[0, 5, 9]] = bad
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_model("vit-fmnist", checkpoint=path)
    n = state[key].numel()
    assert str(e.value) == (
        f"checkpoint {path}: tensor {key!r} holds 3 NaN/Inf values (of {n}); "
        "the file is corrupt or the run that wrote it diverged"
    )


@pytest.mark.parametrize("name", shipped)
def test_shipped_checkpoint_reproduces_manifest(name):
    manifest = json.loads(ZOO[name].manifest.read_text())
    model = load_model(name)
    assert ZOO[name].checkpoint.stat().st_size < 10 * 2**20
    assert input_spec_of(model).img_size == manifest["input"]["img_size"]
    metrics = evaluate(model, load_dataset(input_spec_of(model), "test"))
    assert metrics.images == 10_000
    assert abs(metrics.top1 - manifest["test_top1"]) <= 0.1, (metrics.top1, manifest["test_top1"])


def test_list_models():
    assert list_models() == ["swin-fmnist", "vit-fmnist"]
