"""MACs of every ViT family equal an independent count: ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts 2 FLOPs per multiply-accumulate of matrix products, convolutions and fused
attention, and nothing for bias additions, normalisations, softmax or element-wise ops (the same
products as the cost model). One gap: it has no formula for PyTorch's CPU fused-attention kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``) and would count timm's fused attention as 0;
the reference registers torch's own ``sdpa_flop_count`` for it. Tolerance: exact (integers), in total
and for every module FlopCounterMode reports (the MACs of the cost rows inside that module).
"""

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from vitcompress.config import QuantSpec, Recipe
from vitcompress.cost import cost
from vitcompress.nn.convert import prepare, quantization_points

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from families import FAMILIES, build, input_shape  # noqa: E402

aten = torch.ops.aten
# by default one family per kind of attention code (timm ViT, Swin, F.linear on the weight + relative
# bias, class attention + talking heads, GPSA); the others (same code paths or slower) with -m slow
FAST = {"vit", "swin", "beit", "cait", "convit"}
GENERIC = {"beit", "cait", "convit"}  # attention quantized by nn.generic (timm ViT/Swin: tests/cost/test_cost.py)


def _cpu_sdpa(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def reference_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> dict[str, int]:
    """FlopCounterMode's MACs per module path ('' = the whole model), FLOPs / 2.

    Run with grad enabled: its module tracker fails under no_grad on CaiT's class-token blocks."""
    root = type(model).__name__
    with FlopCounterMode(
        display=False, custom_mapping={aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa}
    ) as fc:
        model(torch.zeros(1, *shape))
    out = {}
    for key, per_op in fc.get_flop_counts().items():
        if key == "Global":
            continue
        path = "" if key == root else key.removeprefix(f"{root}.")
        out[path] = sum(per_op.values()) // 2
    return out


def row_module(name: str, kind: str, modules: set[str]) -> str:
    """The module a cost row belongs to: the weight's holder, or the module running the matmul."""
    if kind != "matmul" and name in modules:
        return name
    return name.rsplit(".", 1)[0] if "." in name else ""


def assert_equal_to_flop_counter(model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    ref = reference_macs(model, shape)
    report = cost(model, input_size=shape[1:], in_chans=shape[0])
    assert report.macs == ref[""]
    modules = {n for n, _ in model.named_modules()}
    owners = [(row_module(r.name, r.kind, modules), r.macs) for r in report.layers]
    for path, macs in ref.items():
        inside = sum(m for owner, m in owners if not path or owner == path or owner.startswith(f"{path}."))
        assert inside == macs, path


@pytest.mark.parametrize("family", [f if f in FAST else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_macs_equal_flop_counter(family):
    assert_equal_to_flop_counter(build(family), input_shape(family))


@pytest.mark.parametrize("family", [f if f in GENERIC else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def test_w8a8_every_product_is_fed_8_bit_operands(family):
    """BOPs from the quantizers that feed each product, generic attention points included: with every
    point at 8 bits (no calibration: bits are all cost needs) each row is 8 x 8 bits, so relative BOPs
    are exactly 64 / 1024; a product no quantizer reaches would count 32 bits and break the equality."""
    macs = cost(build(family)).macs
    model = prepare(build(family), Recipe(name="w8a8-plain", norm=QuantSpec(8, "asymmetric")))
    for _, qz in quantization_points(model):
        qz.enabled = qz.spec.enabled
    report = cost(model)
    assert report.macs == macs and report.rel_bops == 64 / 1024
    for r in report.layers:
        assert (r.w_bits or 8.0, r.a_bits, r.a2_bits or 8.0) == (8.0, 8.0, 8.0), r.name


def _hf_models():
    transformers = pytest.importorskip("transformers")
    vit = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
    swin = dict(embed_dim=16, depths=[2, 2], num_heads=[1, 2], image_size=32, patch_size=2, window_size=4)
    return {
        "hf_vit": transformers.ViTForImageClassification(transformers.ViTConfig(**vit, intermediate_size=37)),
        "hf_deit": transformers.DeiTForImageClassificationWithTeacher(
            transformers.DeiTConfig(**vit, intermediate_size=64)
        ),
        "hf_swin": transformers.SwinForImageClassification(transformers.SwinConfig(**swin)),
    }


@pytest.mark.parametrize("name", ["hf_vit", pytest.param("hf_deit", marks=pytest.mark.slow), "hf_swin"])
def test_hugging_face_modules_macs_equal_flop_counter_and_size_from_config(name):
    torch.manual_seed(0)
    model = _hf_models()[name].eval()
    ref = reference_macs(model, (3, 32, 32))
    report = cost(model)  # the size comes from config.image_size
    assert report.input_shape == (3, 32, 32) and report.macs == ref[""]
    assert any(r.name.endswith(".qk") for r in report.layers) and any(r.name.endswith(".av") for r in report.layers)
