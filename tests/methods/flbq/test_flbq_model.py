"""F-LBQ on a model: block chain, units, curve measurement, plans as recipes, ``allocate_bits``."""

import copy
import json

import pytest
import timm
import torch

from vitcompress.config import QuantSpec, Recipe
from vitcompress.errors import ConfigError, StateError, UnsupportedModelError
from vitcompress.methods.flbq import BitPlan, Curves, FLBQConfig, UnitCurve, allocate_bits, dp_allocate
from vitcompress.methods.flbq.apply import plan_to_recipe
from vitcompress.methods.flbq.measure import measure_curves, quantized_weight
from vitcompress.methods.flbq.units import backbone_layers, parse_unit, weight_units
from vitcompress.models.chain import model_chain
from vitcompress.nn.convert import quantization_points
from vitcompress.quantize import quantize_, restore, save

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
    ).eval()


def tiny_swin():
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224",
        img_size=32,
        patch_size=2,
        window_size=4,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(1, 2),
        num_classes=10,
    ).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
@pytest.mark.parametrize("target", ["pre_logits", "logits"])
def test_chain_reproduces_the_model_exactly(build, target, images):
    model = build()
    chain = model_chain(model, target, check=images)  # raises unless torch.equal
    inputs, out = chain.inputs(images)
    for k in range(len(chain.steps)):  # restarting at any step gives the same output, bit for bit
        assert torch.equal(chain.run(inputs[k], start=k), out)
    assert chain.step_of("blocks.1.mlp.fc1" if build is tiny_vit else "layers.1.blocks.0.mlp.fc1") is not None
    assert chain.step_of("head") is None or build is tiny_swin  # Swin's head.fc lives outside "norm" too
    assert chain.step_of("head.fc") is None


def test_chain_rejects_other_architectures():
    with pytest.raises(UnsupportedModelError, match="VisionTransformer/DeiT"):
        model_chain(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(UnsupportedModelError):
        model_chain(timm.create_model("deit_tiny_distilled_patch16_224", img_size=32, patch_size=8, depth=1))
    with pytest.raises(ConfigError, match=r"target must be one of \['pre_logits', 'logits'\]"):
        model_chain(tiny_vit(), "features")


def test_units_cover_the_backbone_and_skip_the_head():
    model = tiny_vit()
    layers = backbone_layers(model)
    assert "head" not in layers and layers[0] == "patch_embed.proj" and len(layers) == 1 + 2 * 4
    n_backbone = sum(model.get_submodule(n).weight.numel() for n in layers)
    for unit in ("layer", "group:8", "group:32"):
        units = weight_units(model, unit, layers)
        assert sum(u.size for u in units) == n_backbone
    groups = weight_units(model, "group:8", ["blocks.0.attn.qkv"])
    assert [u.name for u in groups[:2]] == ["blocks.0.attn.qkv.g0", "blocks.0.attn.qkv.g1"] and len(groups) == 12
    with pytest.raises(
        ConfigError,
        match=r"group size 7 does not divide the 96 output channels of layer "
        r"'blocks.0.attn.qkv'",
    ):
        weight_units(model, "group:7", ["blocks.0.attn.qkv"])
    for bad in ("channel", "group:0", "group:x"):
        with pytest.raises(ConfigError, match="unit must be 'layer' or 'group:G'"):
            parse_unit(bad)
    with pytest.raises(ConfigError, match="exclude pattern 'nothing.*' matches no backbone layer"):
        backbone_layers(model, ("nothing.*",))


@pytest.mark.parametrize(("build", "unit"), [(tiny_vit, "layer"), (tiny_vit, "group:16"), (tiny_swin, "group:8")])
def test_curves_equal_a_full_rerun_of_the_model(build, unit, images):
    """The cached-input shortcut must give exactly what quantizing the unit and running the whole
    model gives (checked on three units: first, middle, last)."""
    model = build()
    before = copy.deepcopy(model.state_dict())
    curves = measure_curves(model, [images], unit=unit, bits=(2, 4, 8), n_images=12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights restored
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(images), pre_logits=True)
    units = weight_units(model, unit, backbone_layers(model))
    for u in (units[0], units[len(units) // 2], units[-1]):
        curve = next(c for c in curves.units if c.name == u.name)
        for b, d in zip(curve.bits, curve.distortion):
            m = copy.deepcopy(model)
            w = m.get_submodule(u.layer).weight
            with torch.no_grad():
                w[u.start : u.stop] = quantized_weight(w, b)[u.start : u.stop]
            with torch.no_grad():
                got = m.forward_head(m.forward_features(images), pre_logits=True)
            full = float(((got - ref) ** 2).mean())
            assert d <= full * (1 + 1e-5) + 1e-12  # running minimum: never above the direct value
            if b == curve.bits[0]:
                assert d == pytest.approx(full, rel=1e-5, abs=1e-12)
        assert curve.distortion[0] > curve.distortion[-1]  # 2 bits hurt more than 8
    assert all(list(c.distortion) == sorted(c.distortion, reverse=True) for c in curves.units)


def test_measure_rejects_quantized_models_and_bad_bits(images):
    model = tiny_vit()
    with pytest.raises(ConfigError, match=r"bits must be distinct integers in 2..8"):
        measure_curves(model, [images], bits=(1, 4))
    quantize_(model, Recipe(), [images])
    with pytest.raises(StateError, match="measured on the float model"):
        measure_curves(model, [images])


def test_group_bits_in_spec_validate_and_round_trip():
    spec = QuantSpec(8, "symmetric", "group", group_size=4, group_bits=[2, 3, 8])
    assert spec.group_bits == (2, 3, 8)
    assert QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert "group_bits" not in QuantSpec(8).to_dict()
    with pytest.raises(ConfigError, match="group_bits is only allowed with granularity 'group'"):
        QuantSpec(8, group_bits=[4])
    with pytest.raises(ConfigError, match=r"group_bits must be a non-empty list of values in \[2, 3, 4"):
        QuantSpec(8, "symmetric", "group", group_size=4, group_bits=[1, 4])


def test_plan_becomes_a_recipe_the_core_applies(images, tmp_path):
    model = tiny_vit()
    units = weight_units(model, "group:16", backbone_layers(model))
    bits = {u.name: 2 + i % 7 for i, u in enumerate(units)}
    plan = BitPlan(bits=bits, avg_bits=0.0, distortion=0.0, solver="dp", budget=4.0, seconds=0.0)
    recipe = plan_to_recipe(plan, model, head_bits=6)
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    q = copy.deepcopy(model)
    quantize_(q, recipe, [images])
    points = dict(quantization_points(q))
    for u in units:
        got = points[f"{u.layer}.weight"].bits_per_channel(q.get_submodule(u.layer).weight.shape[0])
        assert set(got[u.start : u.stop].tolist()) == {bits[u.name]}
    assert set(points["head.weight"].bits_per_channel(10).tolist()) == {6.0}
    assert points["blocks.0.mlp.fc1.input"].spec.bits == 8
    save(q, tmp_path / "m")
    assert torch.equal(restore(tmp_path / "m", tiny_vit())(images), q(images))
    with pytest.raises(ConfigError, match="plan unit 'blocks.9.attn.qkv' is neither"):
        plan_to_recipe(BitPlan({"blocks.9.attn.qkv": 4}, 4.0, 0.0, "dp", 4.0, 0.0), model)
    partial = {"blocks.0.attn.qkv.g0": 4, "blocks.0.attn.qkv.g2": 4}
    with pytest.raises(ConfigError, match=r"plan groups of layer 'blocks.0.attn.qkv' must be g0..g\{k-1\}"):
        plan_to_recipe(BitPlan(partial, 4.0, 0.0, "dp", 4.0, 0.0), model)


def test_allocate_bits_checks_given_curves(images):
    model = tiny_vit()
    curves = measure_curves(model, [images], bits=(2, 4, 8), n_images=12)
    plan = allocate_bits(model, None, FLBQConfig(budget=4.0), curves=curves)
    assert plan.bits == dp_allocate(curves, 4.0).bits and plan.avg_bits <= 4.0
    lg = allocate_bits(model, None, FLBQConfig(budget=4.0), curves=curves, solver="lg")
    assert lg.solver == "lg" and abs(lg.avg_bits - 4.0) <= 0.02
    wrong = Curves(curves.units[:-1] + (UnitCurve("blocks.9.mlp.fc2", 5, (2, 4), (1.0, 0.5)),))
    with pytest.raises(ConfigError, match="curves do not match the model's 'layer' units: unit 'blocks.1.mlp.fc2'"):
        allocate_bits(model, None, FLBQConfig(budget=4.0), curves=wrong)
    with pytest.raises(ConfigError, match="budget 9 is outside the feasible range"):
        allocate_bits(model, None, FLBQConfig(budget=9.0), curves=curves)
    with pytest.raises(ConfigError, match="calib is required"):
        allocate_bits(model, None, FLBQConfig(budget=4.0))


def test_allocate_bits_measures_the_curves_it_needs(images):
    model = tiny_vit()
    plan = allocate_bits(
        model, [images], FLBQConfig(budget=3.0, unit="group:16", bits=(2, 4, 8), n_images=12, margin=1)
    )
    curves = measure_curves(model, [images], "group:16", (2, 4, 8), n_images=12)
    assert plan.bits == dp_allocate(curves, 3.0, min_bits=2).bits and plan.min_bits == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": 0}, "budget must be a finite number > 0"),
        ({"budget": 3, "unit": "channel"}, "unit must be 'layer' or 'group:G'"),
        ({"budget": 3, "solver": "greedy"}, r"solver must be one of \['dp', 'lg'\]"),
        ({"budget": 3, "bits": (1, 4)}, r"bits must be distinct integers in 2..8"),
        ({"budget": 3, "min_bits": 2, "margin": 1}, "give min_bits or margin, not both"),
        ({"budget": 3, "margin": -1}, "margin must be a finite number >= 0"),
        ({"budget": 3, "n_images": 0}, "n_images must be an integer >= 1"),
        ({"budget": 3, "act_bits": 9}, "act_bits must be one of"),
        ({"budget": 3, "head_bits": 1}, "head_bits must be one of"),
        ({"budget": 3, "eps": 0}, "eps must be a finite number > 0"),
    ],
)
def test_config_validation_names_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FLBQConfig(**kwargs)
    assert FLBQConfig(budget=3, bits=[2, 4], exclude=["blocks.0.*"]).bits == (2, 4)


def test_module_target_measures_that_modules_output(images):
    """target='blocks.0': the chain stops at block 0 and its output is compared; block-1 layers must be
    excluded (they cannot change it)."""
    model = tiny_vit()
    chain = model_chain(model, "blocks.0", check=images)
    assert chain.names == ("patch_embed", "blocks.0")
    with torch.no_grad():
        assert torch.equal(chain.run(images), model.blocks[0](chain.inputs(images)[0][1]))
    with pytest.raises(ConfigError, match="layer 'blocks.1.attn.qkv' does not run before the target 'blocks.0'"):
        measure_curves(model, [images], target="blocks.0", bits=(2, 8))
    curves = measure_curves(model, [images], target="blocks.0", bits=(2, 8), exclude=("blocks.1.*",))
    assert len(curves) == 5 and all(c.distortion[0] > c.distortion[1] for c in curves.units)
    with pytest.raises(ConfigError, match="or a module name of the model, got 'blocks.7'"):
        model_chain(model, "blocks.7")
    with pytest.raises(ConfigError, match="must be inside a block of the chain"):
        model_chain(model, "head")
