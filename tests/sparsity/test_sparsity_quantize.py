"""N:M masks survive post-training quantization and the saved folder: sparsify_ -> quantize_ -> save -> restore."""

import pytest
import timm
import torch

from vitcompress.config import resolve_recipe
from vitcompress.quantize import SPARSITY_FILE, quantize_, restore, save
from vitcompress.sparsity import check_sparsity, masks_of, sparsify_, sparsity_plan

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
        num_classes=10,
    )  # fmt: skip


def test_masks_survive_quantize_save_restore(tmp_path):
    model = tiny_vit()
    plan = sparsify_(model, "2:4")
    masks = masks_of(model)
    calib = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    quantize_(model, resolve_recipe("w8a8"), calib)
    assert sparsity_plan(model) == plan  # quantize_ replaced the layers and carried the masks over
    assert all(check_sparsity(model).values())
    with torch.no_grad():  # an update to a pruned weight (as training makes) is undone by the mask before a forward
        model.get_submodule("blocks.0.mlp.fc1").weight.add_(1.0)
    x = torch.randn(2, 3, 32, 32)
    y = model(x)
    assert all(check_sparsity(model).values())
    save(model, tmp_path / "m")
    assert (tmp_path / "m" / SPARSITY_FILE).is_file()
    restored = restore(tmp_path / "m", tiny_vit())
    assert sparsity_plan(restored) == plan
    for name, (pattern, mask) in masks_of(restored).items():
        assert pattern == masks[name][0] and torch.equal(mask, masks[name][1]), name
    assert all(check_sparsity(restored).values())
    torch.testing.assert_close(restored(x), y, rtol=0, atol=1e-6)  # same weights and masks: same outputs


def test_a_dense_model_saves_no_sparsity_file(tmp_path):
    model = quantize_(tiny_vit(), resolve_recipe("w8a8"), [(torch.randn(2, 3, 32, 32), torch.zeros(2))])
    assert sparsity_plan(model) == {}
    save(model, tmp_path / "m")
    assert not (tmp_path / "m" / SPARSITY_FILE).exists()
