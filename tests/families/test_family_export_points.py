"""The export copy of generic attention points and F.linear-called linears (export/convert.py, issue 14).

The export-only model (QDQ modules in place of the quantizers) computes what the fake-quant model
computes, up to float rounding (``x @ Wᵀ + b`` for ``F.linear``, the attention scale applied to the
scores instead of q): logits SQNR >= 60 dB (observed >= 129 dB). The recipe is the default
``Recipe()``, independent of the presets. Running the ONNX file in
ONNX Runtime per family is tests/export's.
"""

import pytest
import torch

from families import build, images
from vitcompress.config import Recipe
from vitcompress.export.convert import to_export_model
from vitcompress.export.qdq import QDQ
from vitcompress.quantize import quantize_
from vitcompress.report.analysis import sqnr_db


@pytest.mark.parametrize(
    "family",
    ["beit", *(pytest.param(f, marks=pytest.mark.slow) for f in ("swinv2", "cait", "levit"))],
)
def test_export_copy_matches_fake_quant(family):
    model = build(family)
    x = images(family, 4)
    quantize_(model, Recipe(), [x])
    exported, points = to_export_model(model)
    names = {p.name for p in points}
    assert any(".sdpa0." in n or ".matmul0." in n for n in names)  # the generic points are exported
    with torch.no_grad():
        assert sqnr_db(model(x), exported(x)) >= 60.0  # dB


def test_f_linear_called_qkv_exports_as_int8():
    model = build("beit")
    quantize_(model, Recipe(), [images("beit", 4)])
    exported, points = to_export_model(model)
    by_name = {p.name: p for p in points}
    assert by_name["blocks.0.attn.qkv.weight"].exported_as == "int8"
    assert by_name["blocks.0.attn.sdpa0.probs"].exported_as == "uint8"
    assert isinstance(exported.blocks[0].attn.sdpa0.k_quantizer, QDQ)
