"""N:M masks, sparsify_, and the storage / BOPs accounting of sparse layers (GPUSQ-ViT, arXiv:2305.10727)."""

import copy

import pytest
import timm
import torch
from torch import nn

from vitcompress.config import QuantSpec, Recipe
from vitcompress.cost import cost
from vitcompress.errors import ConfigError, StateError
from vitcompress.nn.convert import prepare, quantization_points
from vitcompress.sparsity import (
    NMPattern,
    attach_masks_,
    check_sparsity,
    follows_pattern,
    get_pattern,
    mask_gradients_,
    masks_from_weights_,
    masks_of,
    nm_mask,
    sparsify_,
    sparsity_plan,
    storage_bits,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(**kw):
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


def test_2_4_mask_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 4.0, 1.0, -1.5, 0.0]])
    mask = nm_mask(w, get_pattern("2:4"))
    assert mask.tolist() == [[False, True, True, False, True, False, True, False]]


def test_4_8_pairwise_mask_keeps_whole_pairs_by_pair_magnitude():
    # pairs: (1,1)=2, (3,0)=3, (0.5,0.5)=1, (-2,-2)=4 -> keep pairs 1 and 3 (magnitude sums 3 and 4)
    w = torch.tensor([[1.0, 1.0, 3.0, 0.0, 0.5, 0.5, -2.0, -2.0]])
    mask = nm_mask(w, get_pattern("4:8"))
    assert mask.tolist() == [[False, False, True, True, False, False, True, True]]


def test_mask_property_random_weights():
    torch.manual_seed(1)
    for name in ("2:4", "4:8"):
        p = get_pattern(name)
        w = torch.randn(16, 3, 4, 4)  # a conv: reduction 3·4·4 = 48
        masked = w * nm_mask(w, p)
        assert follows_pattern(masked, p)
        assert int((masked != 0).sum()) == w.numel() * p.n // p.m
        # every kept entry is at least as large (sub-chunk score) as every pruned one of its chunk
        rows = masked.reshape(16, -1, p.m // p.block, p.block).abs().sum(-1)
        dense = w.reshape(16, -1, p.m // p.block, p.block).abs().sum(-1)
        kept = rows > 0
        assert bool((dense.masked_fill(~kept, float("inf")).amin(-1) >= dense.masked_fill(kept, -1).amax(-1)).all())
    assert not follows_pattern(torch.ones(2, 8), get_pattern("2:4"))
    # 2:4-valid but not pair-wise: non-zeros at 0 and 2 of an 8-chunk use two sub-chunks... with 3 pairs used
    assert not follows_pattern(torch.tensor([[1.0, 0, 1, 0, 1, 0, 0, 0]]), get_pattern("4:8"))


def test_storage_bits_match_the_seed_per_chunk():
    # FP16 2:4: 36 bits per 4; INT8 2:4: 20 per 4; INT4 4:8: 20 per 8 (GPUSQ-ViT appendix §2.1)
    one = torch.ones(1)
    assert storage_bits(16 * one, 4, get_pattern("2:4")) == 36
    assert storage_bits(8 * one, 4, get_pattern("2:4")) == 20
    assert storage_bits(4 * one, 8, get_pattern("4:8")) == 20
    assert storage_bits(torch.tensor([8.0, 4.0]), 16, get_pattern("2:4")) == 4 * 20 + 4 * (2 * 4 + 4)
    with pytest.raises(ConfigError, match="0 < n < m"):
        NMPattern(4, 4)
    with pytest.raises(ConfigError, match="pattern must be one of"):
        get_pattern("1:4")


def test_sparsify_default_layers_and_forward_keeps_pattern():
    model = tiny_vit()
    plan = sparsify_(model, "2:4")
    assert set(plan) == {"patch_embed.proj"} | {
        f"blocks.{i}.{l}" for i in range(2) for l in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert all(check_sparsity(model).values())
    assert model.head.weight.count_nonzero() == model.head.weight.numel()  # the head stays dense
    # an optimizer step that moves every weight: the pre-hook re-applies the mask before the next forward
    with torch.no_grad():
        model.blocks[0].attn.qkv.weight.add_(1.0)
    model(torch.randn(2, 3, 32, 32))
    assert all(check_sparsity(model).values())


def test_pattern_holds_after_training_steps_with_masked_gradients():
    model = tiny_vit()
    sparsify_(model, "4:8")
    ref = {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight_sparsity")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        loss = model(torch.randn(4, 3, 32, 32)).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        mask_gradients_(model)
        opt.step()
    for name, before in ref.items():
        w = model.get_submodule(name).weight
        assert follows_pattern(w, get_pattern("4:8")), name
        assert torch.equal(w != 0, before != 0), name  # the same positions, exactly zero, without a forward
        assert not torch.equal(w, before), name  # the kept weights did train


def test_deepcopy_keeps_masks_and_hooks():
    model = tiny_vit()
    sparsify_(model, "2:4")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.blocks[1].mlp.fc1.weight.fill_(1.0)
    twin(torch.randn(1, 3, 32, 32))
    assert all(check_sparsity(twin).values())


def test_errors_indivisible_quantized_and_twice():
    model = tiny_vit(in_chans=1, patch_size=2, img_size=8)  # patch embedding reduction 1·2·2 = 4
    with pytest.raises(ConfigError, match=r"patch_embed\.proj: reduction dimension 4 is not a multiple of 8"):
        sparsify_(model, "4:8")
    plan = sparsify_(model, "4:8", on_indivisible="skip")
    assert "patch_embed.proj" not in plan and "blocks.0.attn.qkv" in plan
    with pytest.raises(StateError, match="already sparse"):
        sparsify_(model, "2:4")
    q = tiny_vit()
    prepare(q, Recipe())
    with pytest.raises(StateError, match="already quantized"):
        sparsify_(q, "2:4")
    with pytest.raises(ConfigError, match="matches no linear/conv layer"):
        sparsify_(tiny_vit(), "2:4", layers=("nothing.*",))


def test_masks_survive_quantization_and_rebuild_from_weights():
    model = tiny_vit()
    sparsify_(model, "2:4")
    masks = masks_of(model)
    prepare(model, Recipe())  # replaces the layers: masks are re-attached by name
    attach_masks_(model, masks)
    assert sparsity_plan(model) == {n: "2:4" for n in masks}
    twin = tiny_vit()
    twin.load_state_dict({k: v for k, v in model.state_dict().items() if "quantizer" not in k}, strict=False)
    masks_from_weights_(twin, sparsity_plan(model))
    assert all(torch.equal(masks[n][1], twin.get_submodule(n).weight_sparsity.mask) for n in masks)


def test_cost_counts_sparse_storage_and_kept_macs():
    dense, sparse = tiny_vit(), tiny_vit()
    sparsify_(sparse, "2:4")
    cd, cs = cost(dense), cost(sparse)
    assert cs.macs == cd.macs  # MACs stay the dense count
    rows_d, rows_s = {r.name: r for r in cd.layers}, {r.name: r for r in cs.layers}
    qkv = sparse.blocks[0].attn.qkv
    assert rows_s["blocks.0.attn.qkv"].bops * 2 == rows_d["blocks.0.attn.qkv"].bops  # only kept MACs
    assert rows_s["blocks.0.attn.qk"].bops == rows_d["blocks.0.attn.qk"].bops  # matmuls are dense
    assert rows_s["head"].bops == rows_d["head"].bops
    # FP32 2:4: 2·32 + 4 metadata bits per 4 weights
    assert rows_s["blocks.0.attn.qkv"].size_bits == qkv.weight.numel() // 4 * 68
    # quantized INT8 2:4: 20 bits per 4 plus 32 bits per per-channel scale
    spec = QuantSpec(8, "symmetric", "channel")
    masks = masks_of(sparse)
    prepare(sparse, Recipe(weight=spec, act=QuantSpec(32), qkv=QuantSpec(32), probs=QuantSpec(32)))
    attach_masks_(sparse, masks)
    for _, qz in quantization_points(sparse):
        qz.enabled = qz.spec.enabled
    row = {r.name: r for r in cost(sparse).layers}["blocks.0.attn.qkv"]
    assert row.size_bits == qkv.weight.numel() // 4 * 20 + qkv.weight.shape[0] * 32
    assert row.bops * 8 == rows_d["blocks.0.attn.qkv"].bops  # 8-bit weights (x1/4), half the MACs (x1/2)


def test_plain_modules_without_mask_are_untouched():
    lin = nn.Linear(8, 4)
    assert not hasattr(lin, "weight_sparsity")


def test_save_restore_keeps_the_masks(tmp_path):
    from vitcompress.quantize import quantize_, restore, save

    model = tiny_vit()
    sparsify_(model, "2:4")
    masks = masks_of(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    quantize_(model, Recipe(), [x])
    attach_masks_(model, masks)
    save(model, tmp_path / "m")
    back = restore(tmp_path / "m", tiny_vit())
    assert sparsity_plan(back) == {n: "2:4" for n in masks}
    assert all(torch.equal(masks[n][1], back.get_submodule(n).weight_sparsity.mask) for n in masks)
    assert torch.equal(back(x), model.eval()(x))
    dense = tiny_vit()  # a dense model saved over the sparse folder does not come back sparse
    quantize_(dense, Recipe(), [x])
    save(dense, tmp_path / "m")
    assert sparsity_plan(restore(tmp_path / "m", tiny_vit())) == {}
