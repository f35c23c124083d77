"""Per-layer analysis (SQNR, bits), the markdown report and the PNG charts."""

import math

import pytest
import timm
import torch

from vitcompress.config import get_preset
from vitcompress.quantize import quantize_
from vitcompress.report.analysis import layer_stats, sqnr_db
from vitcompress.report.charts import bar_chart
from vitcompress.report.markdown import compression_report


def test_sqnr_golden_values():
    ref = torch.tensor([3.0, 4.0])  # ‖ref‖² = 25
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + torch.tensor([0.5, 0.0])) == pytest.approx(10 * math.log10(25 / 0.25))  # 20 dB


def _tiny_vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=10
    ).eval()


def _pair():
    fp, q = _tiny_vit(), _tiny_vit()  # same seed: same weights
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return fp, quantize_(q, get_preset("w4a8"), [x]), x


def test_layer_stats_bits_and_errors():
    fp, q, x = _pair()
    rows = {r.name: r for r in layer_stats(fp, q, x)}
    assert set(rows) == {
        "patch_embed.proj",
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
        "head",
    }
    assert rows["blocks.0.mlp.fc1"].w_bits == 4 and rows["blocks.0.mlp.fc1"].a_bits == 8
    assert rows["head"].w_bits == 8 and rows["patch_embed.proj"].w_bits == 8  # presets keep the edges at 8 bit
    for r in rows.values():
        assert 0 < r.weight_sqnr_db < math.inf and r.output_sqnr_db < math.inf
    assert rows["head"].weight_sqnr_db > rows["blocks.0.mlp.fc1"].weight_sqnr_db  # 8-bit weights beat 4-bit ones


def test_markdown_report_and_chart(tmp_path):
    fp, q, x = _pair()
    metrics = {
        "model": "tiny",
        "recipe": "w4a8",
        "eval_images": 4,
        "calib_size": 4,
        "seed": 0,
        "seconds": 1.0,
        "fp_top1": 50.0,
        "q_top1": 25.0,
        "fp_top5": 100.0,
        "q_top5": 75.0,
        "macs": 1000,
        "fp_bops": 1024000,
        "bops": 32000,
        "fp_size_bytes": 4000,
        "size_bytes": 1000,
        "rel_bops": 0.03125,
    }
    text = compression_report(metrics, layer_stats(fp, q, x), ["bits_per_layer.png"])
    assert "| top-1 (%) | 50.00 | 25.00 | -25.00 |" in text
    assert "×32.0 fewer" in text and "×4.0 smaller" in text and "| `blocks.0.mlp.fc1` | 4 | 8 |" in text
    assert "![bits_per_layer.png](bits_per_layer.png)" in text
    path = tmp_path / "bits.png"
    bar_chart(path, ["a", "b"], {"w": [4, 8], "a": [8, 8]}, "bits", "bits per layer")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bits.png"]  # written atomically: no temporary file left
