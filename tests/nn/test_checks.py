"""``check_finite_weights``: a NaN/Inf weight, buffer or quantizer scale is named before it spreads."""

import pytest
import torch

from vitcompress.config import get_preset
from vitcompress.errors import DataError
from vitcompress.models.zoo import build_zoo_model
from vitcompress.nn.checks import check_finite_weights
from vitcompress.nn.convert import prepare, quantization_points
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_finite_model_passes_float_and_quantized():
    model = build_zoo_model("vit-fmnist")
    check_finite_weights(model)
    quantize_(model, get_preset("w8a8"), [torch.randn(4, 1, 28, 28)])
    check_finite_weights(model)


@pytest.mark.parametrize(
    "name, value",
    [("blocks.1.mlp.fc2.weight", float("nan")), ("pos_embed", float("inf")), ("norm.bias", -float("inf"))],
)
def test_a_non_finite_weight_is_named(name, value):
    model = build_zoo_model("vit-fmnist")
    with torch.no_grad():
        model.get_parameter(name).view(-1)[:2] = value
    with pytest.raises(DataError, match=rf"^model: weight {name} holds 2 NaN/Inf values \(of \d+\)$"):
        check_finite_weights(model)


def test_a_non_finite_or_zero_quantizer_scale_is_named():
    model = build_zoo_model("vit-fmnist")
    quantize_(model, get_preset("w8a8"), [torch.randn(4, 1, 28, 28)])
    qz = dict(quantization_points(model))["blocks.0.attn.proj.input"]
    qz.scale.fill_(float("nan"))
    with pytest.raises(DataError, match=r"^saved/: buffer blocks\.0\.attn\.proj\.input_quantizer\.scale holds 1 NaN"):
        check_finite_weights(model, "saved/")
    qz.scale.fill_(0.0)
    with pytest.raises(DataError, match=r"^model: quantizer blocks\.0\.attn\.proj\.input has a zero scale"):
        check_finite_weights(model)


def test_an_uncalibrated_quantizer_is_not_a_zero_scale_error():
    model = build_zoo_model("vit-fmnist")
    prepare(model, get_preset("w8a8"))
    for _, qz in quantization_points(model):
        if hasattr(qz, "scale"):
            qz.scale.data.zero_()
    check_finite_weights(model)  # nothing is calibrated yet: the scales are placeholders
