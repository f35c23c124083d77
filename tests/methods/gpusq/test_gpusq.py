"""GPUSQ-ViT's algorithm on a tiny ViT: both stages, masks through QAT, accounting, errors, SIGTERM, edge bits."""

from dataclasses import replace

import pytest
import torch
from torch.utils.data import TensorDataset

from tiny_models import tiny_swin, tiny_vit
from vitcompress.config import EDGE_8BIT, QuantSpec
from vitcompress.cost import cost
from vitcompress.errors import ConfigError, StateError
from vitcompress.methods.gpusq import GPUSQConfig, gpusq_, gpusq_preset, gpusq_quant_recipe
from vitcompress.nn.linear import QuantLinear
from vitcompress.quantize import recipe_of
from vitcompress.sparsity import check_sparsity, get_pattern, sparsify_, sparsity_plan
from vitcompress.train.qat import prepare_sparse_qat_, qat_recipe
from vitcompress.train.trainer import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=32):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)


def tiny_config(name):
    steps = TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1)
    return replace(gpusq_preset(name), prune=steps, qat=replace(steps, lr=1e-4), calib_size=16, factor_images=16)


@pytest.mark.parametrize("name, pattern, wbits", [("gpusq-int8", "2:4", 8), ("gpusq-int4", "4:8", 4)])
def test_both_stages_keep_the_pattern_and_learn_scales(name, pattern, wbits):
    model, ds = tiny_vit(), data()
    stages = []
    scale_before = {}

    def on_stage(stage, m):
        stages.append(stage)
        if stage == "ptq":
            scale_before["qkv"] = m.blocks[0].attn.qkv.weight_quantizer.scale.detach().clone()

    res = gpusq_(model, ds, ds, tiny_config(name), on_stage=on_stage)
    assert stages == ["sparse_float", "ptq", "qat"]
    # depth 2: patch, stage1 (blocks.0), stage2 (blocks.1), final
    assert len(res["weight_factors"]) == 4 and sum(res["weight_factors"]) == pytest.approx(1.0)
    assert recipe_of(model).name == name
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, QuantLinear) and qkv.weight_quantizer.spec.bits == wbits
    assert qkv.weight_quantizer.spec.learnable and isinstance(qkv.weight_quantizer.scale, torch.nn.Parameter)
    assert not torch.equal(qkv.weight_quantizer.scale, scale_before["qkv"])  # LSQ moved the scales
    # the pattern holds in the float weights and in the fake-quantized weights the GEMM uses
    assert all(check_sparsity(model).values()) and len(sparsity_plan(model)) == 9
    p = get_pattern(pattern)
    from vitcompress.sparsity import follows_pattern

    assert follows_pattern(qkv.quantized_weight(), p)
    assert torch.equal(qkv.weight != 0, res["sparse_float"].blocks[0].attn.qkv.weight != 0)
    # accounting: INT8 2:4 = 20 bits per 4 weights, INT4 4:8 = 20 bits per 8, + one 32-bit scale per channel
    row = {r.name: r for r in cost(model).layers}["blocks.0.attn.qkv"]
    per_weight_bits = 20 / 4 if pattern == "2:4" else 20 / 8
    assert row.size_bits == int(qkv.weight.numel() * per_weight_bits) + qkv.weight.shape[0] * 32


def test_sparse_qat_needs_masks_and_a_zero_preserving_recipe():
    with pytest.raises(StateError, match="no N:M masks"):
        prepare_sparse_qat_(tiny_vit(), gpusq_quant_recipe(8, "x"), data())
    model = tiny_vit()
    sparsify_(model, "2:4")
    bad = replace(gpusq_quant_recipe(8, "x"), weight=QuantSpec(8, "asymmetric", "channel"))
    with pytest.raises(ConfigError, match="weight scheme must be 'symmetric'"):
        prepare_sparse_qat_(model, bad, data())
    with pytest.raises(ConfigError, match="bias_correction must be false"):
        prepare_sparse_qat_(model, replace(gpusq_quant_recipe(8, "x"), bias_correction=True), data())
    r = qat_recipe(gpusq_quant_recipe(4, "x"))
    assert r.weight.learnable and r.act.learnable and not r.norm.learnable  # norm stays float


def test_presets_and_config_errors():
    cfg = gpusq_preset("gpusq-int4", steps=7, qat_steps=3, seed=5)
    assert (cfg.pattern, cfg.prune.steps, cfg.qat.steps, cfg.prune.seed, cfg.qat.seed) == ("4:8", 7, 3, 5, 6)
    with pytest.raises(ConfigError, match="preset must be one of"):
        gpusq_preset("gpusq-int2")
    with pytest.raises(ConfigError, match="pattern must be one of"):
        replace(cfg, pattern="1:4")
    with pytest.raises(ConfigError, match="on_indivisible must be one of"):
        replace(cfg, on_indivisible="drop")
    with pytest.raises(ConfigError, match="factor_images must be an integer >= 1"):
        replace(cfg, factor_images=0)
    with pytest.raises(ConfigError, match="quant must be a Recipe"):
        GPUSQConfig("x", "2:4", quant="w8a8", prune=cfg.prune, qat=cfg.qat)


def test_sigterm_in_stage_1_stops_before_stage_2_and_resumes(tmp_path, monkeypatch):
    import os
    import signal

    import vitcompress.methods.gpusq.algorithm as gpusq
    from vitcompress.train.trainer import TrainingInterrupted

    real = gpusq.mask_gradients_

    def mask_then_sigterm(model):
        real(model)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(gpusq, "mask_gradients_", mask_then_sigterm)
    stages = []
    with pytest.raises(TrainingInterrupted, match="stage 1 .* at step 1"):
        gpusq_(
            tiny_vit(),
            data(),
            data(),
            tiny_config("gpusq-int8"),
            state_dir=tmp_path,
            on_stage=lambda s, m: stages.append(s),
        )
    assert stages == [] and (tmp_path / "prune" / "trainer_state.pt").is_file()
    monkeypatch.setattr(gpusq, "mask_gradients_", real)
    res = gpusq_(tiny_vit(), data(), data(), tiny_config("gpusq-int8"), state_dir=tmp_path, resume=True)
    assert res["prune"]["steps"] == 2 and res["qat"]["steps"] == 2


def test_quant_recipe_fits_swin_and_8bit_edges():
    from vitcompress.nn.convert import prepare

    swin = tiny_swin()
    recipe = gpusq_quant_recipe(4, "gpusq-int4")
    assert recipe.overrides == EDGE_8BIT  # the one 8-bit edge list of every preset
    prepare(swin, recipe)  # Swin's head is head.fc
    assert swin.head.fc.weight_quantizer.spec.bits == 8 and swin.patch_embed.proj.weight_quantizer.spec.bits == 8
    assert swin.layers[0].blocks[0].mlp.fc1.weight_quantizer.spec.bits == 4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, r"^steps must be an integer >= 1, got 0$"),
        ({"steps": -2}, r"^steps must be an integer >= 1, got -2$"),
        ({"qat_steps": 0}, r"^qat_steps must be an integer >= 1, got 0$"),  # not "the default"
        ({"batch_size": 0}, r"^batch_size must be an integer >= 1, got 0$"),
    ],
)
def test_preset_and_options_refuse_zero_instead_of_falling_back(kwargs, message):
    from vitcompress.methods.gpusq.cli import GPUSQOptions

    with pytest.raises(ConfigError, match=message):
        gpusq_preset("gpusq-int8", **kwargs)
    with pytest.raises(ConfigError, match=message):
        GPUSQOptions(**kwargs)


def test_build_keeps_the_given_numbers():
    from vitcompress.methods.gpusq.cli import GPUSQOptions, build

    cfg = build(GPUSQOptions(steps=5, qat_steps=1, calib_size=7), {})
    assert (cfg.prune.steps, cfg.qat.steps, cfg.calib_size) == (5, 1, 7)
    assert build(GPUSQOptions(steps=5), {}).calib_size == 512  # no --calib-size: the preset's
    with pytest.raises(ConfigError, match="eval_stages must be true or false"):
        replace(gpusq_preset("gpusq-int8"), eval_stages="no")
