"""RepQ-ViT post-LayerNorm reparameterization: pairs found from what runs, exact in float, quantizes better."""

import copy
import dataclasses

import pytest
import torch
from tests.families import CORE, build, images
from torch import nn

from vitcompress.config import QuantSpec, Recipe, get_preset
from vitcompress.errors import StateError, UnsupportedModelError
from vitcompress.nn.reparam import find_norm_consumers, reparameterize_
from vitcompress.quantize import quantize_, restore, save

pytestmark = pytest.mark.usefixtures("one_thread")
A4 = QuantSpec(4, "asymmetric")


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).detach().norm() / ref.detach().norm())


def _batches(x: torch.Tensor) -> list[torch.Tensor]:
    return list(x.split(8))


@pytest.mark.parametrize("family", [*CORE, "swinv2", "beit", "convit", "pit"])
def test_reparameterized_float_model_equals_the_original(family):
    model = build(family)
    x = images(family, 16)
    with torch.no_grad():
        ref = model(x)
        pairs = reparameterize_(model, _batches(x), A4)
        out = model(x)
    assert pairs
    assert _rel_err(out, ref) < 1e-5  # float rounding only (measured ≤ 1.2e-6)


def test_consumers_are_found_from_what_runs():
    vit = {p.norm: p.linears for p in find_norm_consumers(build("vit"), images("vit", 2))}
    assert vit == {
        "blocks.0.norm1": ("blocks.0.attn.qkv",),
        "blocks.0.norm2": ("blocks.0.mlp.fc1",),
        "blocks.1.norm1": ("blocks.1.attn.qkv",),
        "blocks.1.norm2": ("blocks.1.mlp.fc1",),
        "norm": ("head",),  # through the class-token index
    }
    swin = {p.norm: p.linears for p in find_norm_consumers(build("swin"), images("swin", 2))}
    assert swin["layers.0.blocks.0.norm1"] == ("layers.0.blocks.0.attn.qkv",)  # through roll, pad, windows
    assert swin["layers.1.downsample.norm"] == ("layers.1.downsample.reduction",)
    assert swin["norm"] == ("head.fc",)  # through the average pool
    # Swin-V2 normalises after the residual branch (its output is added): only the final norm folds
    assert [p.norm for p in find_norm_consumers(build("swinv2"), images("swinv2", 2))] == ["norm"]
    # BEiT calls F.linear(x, qkv.weight, its own q/v bias): norm1 cannot fold, norm2 can
    beit = [p.norm for p in find_norm_consumers(build("beit"), images("beit", 2))]
    assert "blocks.0.norm1" not in beit and "blocks.0.norm2" in beit


class _Residual(nn.Module):
    """y = fc(norm(x)) + norm(x): the norm output also enters an add, so folding would change y."""

    def __init__(self):
        super().__init__()
        self.norm, self.fc, self.other, self.fc2 = nn.LayerNorm(8), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.norm(x)
        h = self.fc(h) + h
        return self.fc2(self.other(h)[:, 1:].mean(1))


def test_a_norm_whose_output_escapes_is_left_alone_and_a_bias_free_consumer_gets_a_bias():
    torch.manual_seed(0)
    model = _Residual()
    model.fc2.bias = None
    x = torch.randn(4, 5, 8)
    assert [(p.norm, p.linears) for p in find_norm_consumers(model, x)] == [("other", ("fc2",))]
    ref = model(x)
    reparameterize_(model, [x], A4)
    assert model.fc2.bias is not None
    assert _rel_err(model(x), ref) < 1e-5


def test_folded_channels_share_one_range():
    model = build("vit")
    x = images("vit", 16)
    reparameterize_(model, _batches(x), A4)  # min-max ranges per channel
    seen = {}
    model.blocks[0].norm2.register_forward_hook(lambda m, i, o: seen.setdefault("y", o.detach()))
    with torch.no_grad():
        model(x)
    y = seen["y"].reshape(-1, seen["y"].shape[-1])  # (tokens, C)
    lo, hi = y.amin(0).clamp(max=0), y.amax(0).clamp(min=0)
    # every channel's range maps onto [−z̃ s̃, (15 − z̃) s̃]; zero points rounded to the grid: ±1 step
    step = float((hi - lo).mean()) / 15
    assert float((hi - lo).max() - (hi - lo).min()) <= 2 * step + 1e-6


def _outlier_channels(model: nn.Module) -> nn.Module:
    """LayerNorm outputs with a few channels 20× wider than the rest, as trained ViTs have."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[:4] *= 20
    return model


def test_reparam_makes_4_bit_per_tensor_inputs_fit_outlier_channels():
    model = _outlier_channels(build("vit"))
    x = images("vit", 32)
    with torch.no_grad():
        ref = model(x)
    # 8 bit everywhere but the inputs of the LayerNorms' consumers (4 bit, per tensor)
    recipe = get_preset("w8a8").with_overrides(("*.qkv.input", {"bits": 4}), ("*.fc1.input", {"bits": 4}))
    errs = {}
    for reparam in (False, True):
        q = quantize_(copy.deepcopy(model), dataclasses.replace(recipe, reparam=reparam), _batches(x))
        with torch.no_grad():
            errs[reparam] = _rel_err(q(x), ref)
    assert errs[True] < 0.5 * errs[False]  # measured 0.13 vs 0.33 on this model


def test_save_restore_and_recipe_round_trip(tmp_path):
    model = build("swin")  # patch merging's reduction has no bias: folding adds one, restore must too
    x = images("swin", 16)
    recipe = dataclasses.replace(get_preset("w4a4"), reparam=True)
    q = quantize_(copy.deepcopy(model), recipe, _batches(x))
    assert q.layers[1].downsample.reduction.bias is not None
    save(q, tmp_path / "m")
    back = restore(tmp_path / "m", build("swin"))
    with torch.no_grad():
        assert torch.equal(back(x), q(x))
    assert recipe.to_dict()["reparam"] is True and "reparam" not in Recipe().to_dict()
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_errors():
    model = build("vit")
    with pytest.raises(StateError, match="reparam: pass calibration data"):
        quantize_(model, dataclasses.replace(Recipe(), reparam=True), None)
    quantize_(model, Recipe(), _batches(images("vit", 8)))
    with pytest.raises(UnsupportedModelError, match="before prepare"):
        reparameterize_(model, _batches(images("vit", 8)), A4)


class _SharedLinear(nn.Module):
    """One linear run on two LayerNorms' outputs: folding either would break the other call."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc, self.head = nn.LayerNorm(8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.c = nn.LayerNorm(8)

    def forward(self, x):
        return self.head(self.c(self.fc(self.a(x)) + self.fc(self.b(x))))


def test_a_linear_shared_by_two_norms_is_not_folded():
    model = _SharedLinear()
    assert [p.norm for p in find_norm_consumers(model, torch.randn(3, 8))] == ["c"]
