"""MixA-Q on a model: window importance, two-branch Swin block, ratios, training-free mode, BOPs."""

import copy
import json

import pytest
import timm
import torch

from vitcompress.config import get_preset
from vitcompress.errors import ConfigError, StateError, UnsupportedModelError
from vitcompress.methods.mixaq import equivalent_bits
from vitcompress.methods.mixaq.bops import act_bits_eq, effective_ratios, group_macs, mixed_cost
from vitcompress.methods.mixaq.model import (
    calibrate_low,
    low_quantizers,
    mixaq_,
    model_groups,
    set_ratios,
    two_branch_,
)
from vitcompress.methods.mixaq.two_branch import TwoBranchSwinBlock, split_windows, token_importance, window_scores
from vitcompress.nn.convert import set_quantizers
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_swin(img_size: int = 32, window: int = 4, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=img_size,
        patch_size=2,
        window_size=window,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        num_classes=10,
    ).eval()


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]


@pytest.fixture(scope="module")
def quantized(calib):
    m = quantize_(tiny_swin(), get_preset("w8a8"), calib)
    return m


def test_window_scores_by_hand():
    tokens = torch.zeros(1, 4, 4)
    tokens[0, 0, 0], tokens[0, 3, 3] = 3.0, 4.0  # windows 2x2: top-left and bottom-right
    assert window_scores(tokens, (2, 2), (0, 0)).tolist() == [[3.0, 0.0, 0.0, 4.0]]
    # shift by 1: the roll brings (0,0) to (3,3) and (3,3) to (2,2): both land in the last window
    shifted = window_scores(tokens, (2, 2), (1, 1))
    assert shifted.tolist() == [[0.0, 0.0, 0.0, 5.0]]
    # padding a 3x3 map to 4x4 adds zeros: the scores are those of the real tokens
    assert window_scores(torch.ones(1, 3, 3), (2, 2), (0, 0)).tolist() == [
        [2.0, pytest.approx(2**0.5), pytest.approx(2**0.5), 1.0]
    ]
    x = torch.tensor([[[[1.0, -3.0]]]])
    assert token_importance(x).tolist() == [[[2.0]]]


def test_split_windows_nested_and_disjoint():
    scores = torch.rand(3, 16, generator=torch.Generator().manual_seed(0))
    scores[:, 5] = scores[:, 6]  # a tie: the stable sort keeps it deterministic
    previous = None
    for n_low in range(0, 13):
        pruned, low, high = split_windows(scores, 2, n_low)
        for b in range(3):
            sets = [set(t[b].tolist()) for t in (pruned, low, high)]
            assert sum(map(len, sets)) == 16 and set().union(*sets) == set(range(16))
            assert max(scores[b, list(sets[0] | sets[1])], default=-1) <= min(scores[b, list(sets[2])], default=9)
        current = [set(low[b].tolist()) for b in range(3)]
        if previous is not None:
            assert all(p <= c for p, c in zip(previous, current))
        previous = current


def test_ratio_zero_equals_quantized_model_exactly(quantized):
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = quantized(x)
    mixed = two_branch_(copy.deepcopy(quantized), 4)
    assert sum(isinstance(m, TwoBranchSwinBlock) for m in mixed.modules()) == 4
    with torch.no_grad():
        assert torch.equal(mixed(x), ref)


@pytest.mark.parametrize("img_size,window", [(32, 4), (24, 5)])  # 24/2 = 12 tokens, window 5: padded
def test_gather_scatter_is_a_permutation(calib, img_size, window):
    """With every quantizer off both branches compute the float block, so any ratio (and the shift
    masks of the gathered windows) must give the float model's output: the gather/scatter only permutes."""
    float_model = tiny_swin(img_size, window)
    cal = [torch.randn(4, 3, img_size, img_size)]
    mixed = two_branch_(quantize_(copy.deepcopy(float_model), get_preset("w8a8"), cal), 4)
    set_quantizers(mixed, False)
    for q in low_quantizers(mixed):
        q.enabled = False
    x = torch.randn(2, 3, img_size, img_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = float_model(x)
        for r in (0.3, 0.5, 0.8):
            set_ratios(mixed, [r, r])
            torch.testing.assert_close(mixed(x), ref, rtol=0, atol=1e-5)


def test_pruned_windows_pass_through_and_ratio_changes_output(quantized, calib):
    mixed = two_branch_(copy.deepcopy(quantized), 4)
    calibrate_low(mixed, calib)
    block = mixed.layers[0].blocks[0]  # 16x16 tokens, 16 windows of 4x4, no shift
    x = torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    block.prune, block.ratio = 0.25, 0.0
    with torch.no_grad():
        y = block(x)
    scores = window_scores(token_importance(x), (4, 4), (0, 0))
    pruned, _, high = split_windows(scores, 4, 0)
    win = lambda t: t.view(2, 4, 4, 4, 4, 16).permute(0, 1, 3, 2, 4, 5).reshape(2, 16, 16, 16)  # noqa: E731
    for b in range(2):
        assert torch.equal(win(y)[b, pruned[b]], win(x)[b, pruned[b]])
        assert not torch.equal(win(y)[b, high[b]], win(x)[b, high[b]])
    block.prune, block.ratio = 0.0, 0.5
    with torch.no_grad():
        y_low = block(x)
        block.ratio = 0.0
        y_high = block(x)
    _, low, high = split_windows(scores, 0, 8)
    for b in range(2):  # only the low windows change
        assert torch.equal(win(y_low)[b, high[b]], win(y_high)[b, high[b]])
        assert not torch.equal(win(y_low)[b, low[b]], win(y_high)[b, low[b]])


def test_low_branch_shares_weights_not_quantizers(quantized):
    mixed = two_branch_(copy.deepcopy(quantized), 4)
    block = mixed.layers[0].blocks[1]
    assert block.low["attn"].qkv.weight is block.attn.qkv.weight
    assert block.low["mlp"].fc1.bias is block.mlp.fc1.bias
    assert block.low["attn"].relative_position_bias_table is block.attn.relative_position_bias_table
    assert block.low["attn"].qkv.weight_quantizer is block.attn.qkv.weight_quantizer
    assert block.low["norm1"].weight is not block.norm1.weight  # own LayerNorm copies
    assert torch.equal(block.low["norm1"].weight, block.norm1.weight)
    assert block.low["attn"].qkv.input_quantizer.spec.bits == 4
    assert block.low["attn"].probs_quantizer.spec.bits == 4 and block.attn.probs_quantizer.spec.bits == 8
    # 10 act points per block (norm1, qkv, q, k, v, probs, proj, norm2, fc1, fc2 inputs) x 4 blocks
    assert len(low_quantizers(mixed)) == 10 * 4
    # the low copies share state, not hook containers (vitcompress.nn.attention.clone_into)
    fired = []
    block.low["attn"].qkv.register_forward_hook(lambda *a: fired.append("low"))
    block.attn.qkv(torch.randn(2, block.attn.qkv.in_features))
    assert fired == [] and block.low["attn"].qkv._forward_hooks is not block.attn.qkv._forward_hooks


def test_set_ratios_errors(quantized):
    mixed = two_branch_(copy.deepcopy(quantized), 4)
    assert [g.name for g in model_groups(mixed)] == ["layers.0.blocks.0-1", "layers.1.blocks.0-1"]
    with pytest.raises(ConfigError, match=r"ratios\[1\]: must be in \[0, 0.8\], got 0.9"):
        set_ratios(mixed, [0.1, 0.9])
    with pytest.raises(ConfigError, match=r"ratios\[0\]: must be in \[0, 0.8\], got -0.1"):
        set_ratios(mixed, [-0.1, 0.0])
    with pytest.raises(ConfigError, match="ratios: must hold 2 values"):
        set_ratios(mixed, [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"prune\[0\]: must be in \[0, 1\]"):
        set_ratios(mixed, [0.1, 0.2], prune=[1.5, 0])
    with pytest.raises(StateError, match="two_branch_"):
        set_ratios(copy.deepcopy(quantized), [0.0, 0.0])
    with pytest.raises(ConfigError, match="low_bits"):
        two_branch_(copy.deepcopy(quantized), 1)


def test_non_swin_is_refused(calib):
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=1)
    with pytest.raises(UnsupportedModelError, match="MixA-Q needs window attention"):
        mixaq_(vit, calib, get_preset("w8a8"), 4)


def test_mixaq_training_free_and_bops_match_equivalent_bits(calib):
    model = mixaq_(tiny_swin(), calib, get_preset("w8a8"), 4)
    assert all(q.is_calibrated for q in low_quantizers(model))
    g, c = group_macs(model)
    assert sum(g) + c == mixed_cost(model).macs
    base = mixed_cost(model, [0.0, 0.0])
    assert act_bits_eq(base) == 8.0
    for ratios in ([0.3, 0.0], [0.5, 0.8], [0.8, 0.8]):
        report = mixed_cost(model, ratios)
        eff = effective_ratios(model, ratios)
        # measured MAC-weighted activation bits = MixA-Q supplementary eq. 5 with the effective ratios (A8 / A4)
        assert act_bits_eq(report) == pytest.approx(equivalent_bits(g, c, eff, 8), rel=1e-12)
        assert report.bops < base.bops and report.macs == base.macs
    assert effective_ratios(model, [0.3, 0.5]) == [5 / 16, 0.5]  # round(0.3*16) = 5, round(0.5*4) = 2
    pruned = mixed_cost(model, [0.0, 0.0], prune=[0.5, 0.5])
    # pruning half the windows of every block removes half of the blocks' MACs (SparseViT, eq. 4)
    assert pruned.macs == c + sum(g) // 2


def test_saqa_fine_tunes_both_branches(tmp_path):
    from vitcompress.methods.mixaq.saqa import SAQAConfig, saqa_
    from vitcompress.train.qat import qat_recipe

    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(3, 32, 32, generator=g), i % 10) for i in range(32)]
    model = mixaq_(tiny_swin(), [torch.stack([x for x, _ in data[:16]])], qat_recipe(get_preset("w8a8")), 4)
    low_scale = model.layers[0].blocks[0].low["mlp"].fc1.input_quantizer.scale
    assert isinstance(low_scale, torch.nn.Parameter)  # LSQ scales in the low branch too
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SAQAConfig(steps=4, batch_size=8, lr=1e-3, seed=0)
    result = saqa_(model, data, config, state_dir=tmp_path)
    assert result["steps"] == 4 and (tmp_path / "trainer_state.pt").is_file()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "layers.0.blocks.0.attn.qkv.weight" in changed  # shared weights learn
    assert any(n.startswith("layers.0.blocks.0.low.") for n in changed)  # the low branch's own LN / scales
    for h in result["history"]:  # means of sampled sums: 2 groups, cost (0.65, 0.95) -> sums in [0.2, 1.4]
        assert 0.2 - 1e-9 <= h["ratio_sum"] <= 1.4 + 1e-9
    with pytest.raises(ConfigError, match="sampler"):
        SAQAConfig(sampler="random")


def test_two_branch_size_counts_shared_weights_once(calib):
    """The low branch shares the high branch's weights: the stored size is the PTQ model's plus the low
    branch's own LayerNorm copies (its activation scales are not counted: cost counts one row per weight)."""
    from vitcompress.cost import cost

    ptq = quantize_(tiny_swin(), get_preset("w8a8"), calib)
    mixed = mixaq_(tiny_swin(), calib, get_preset("w8a8"), 4)
    before, after = cost(ptq).size_bytes, cost(mixed).size_bytes
    own = [(n, p) for n, p in mixed.named_parameters(remove_duplicate=True) if ".low." in n]
    assert own and all(".norm" in n for n, _ in own)  # the low branch owns only its LayerNorm copies
    assert after - before == 4 * sum(p.numel() for _, p in own)  # stored in FP32, nothing else is new


def test_compress_with_saqa_on_tiny_swin(tmp_path):
    """``MixAQConfig(saqa=...)``: LSQ scales, SAQA from the float teacher, then the search; all through compress_."""
    import vitcompress
    from vitcompress.data import calibration_subset
    from vitcompress.methods.mixaq import MixAQConfig, MixAQSearchConfig, SAQAConfig, get_ratios

    g = torch.Generator().manual_seed(6)
    train = [(torch.randn(3, 32, 32, generator=g), i % 10) for i in range(48)]
    config = MixAQConfig(
        eval_images=16,
        search=MixAQSearchConfig(population=2, generations=0),
        saqa=SAQAConfig(steps=2, batch_size=8, lr=1e-3),
    )
    model = tiny_swin()
    result = vitcompress.compress_(model, config, calibration_subset(train, 16, seed=0), state_dir=tmp_path)
    assert isinstance(model.layers[0].blocks[0].low["mlp"].fc1.input_quantizer.scale, torch.nn.Parameter)
    assert result.metrics["saqa"]["steps"] == 2 and (tmp_path / "saqa" / "trainer_state.pt").is_file()
    assert result.plan == get_ratios(model)[0] and "test" not in result.metrics  # no eval_data
    tag = json.loads((tmp_path / "state.json").read_text())["fingerprint"]["tag"]
    assert tag.startswith("SwinTransformer|w8a8|A4|calib 16|eval 16|0.8|saqa ")
