"""Cost model: exact MAC counts against hand counts, BOPs and size from quantizer bits."""

import json
from collections import Counter
from types import SimpleNamespace

import pytest
import timm
import torch
from timm.layers import Attention
from timm.models.swin_transformer import SwinTransformer, WindowAttention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitcompress.cost import cost, format_table, macs_by_block
from vitcompress.errors import ConfigError


class FakeQuantizer(nn.Module):
    """The quantizer contract the cost model reads: enabled, spec.bits, bits_per_channel, qparam_count.

    It holds a persistent ``scale`` buffer like a real one (that state must count only through
    ``qparam_count``) and refuses to run while enabled, like an uncalibrated quantizer.
    """

    def __init__(self, bits: int, group_bits: list[int] | None = None, qparams: int = 0):
        super().__init__()
        self.enabled = True
        self.spec = SimpleNamespace(bits=bits)
        self.group_bits = group_bits
        self.qparams = qparams
        self.register_buffer("scale", torch.ones(max(qparams, 1)))

    def bits_per_channel(self, n: int) -> torch.Tensor:
        if self.group_bits is None:
            return torch.full((n,), float(self.spec.bits))
        return torch.tensor(self.group_bits, dtype=torch.float32).repeat_interleave(n // len(self.group_bits))

    def qparam_count(self) -> int:
        return self.qparams

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            raise RuntimeError("uncalibrated quantizer ran: the cost probe must pass quantizers through")
        return x


def attach_fake(model: nn.Module, w: int = 4, a: int = 8, attn: tuple[int, int, int, int] = (6, 5, 4, 3)) -> nn.Module:
    """W``w`` (one scale per output channel) A``a`` on every linear/conv; q, k, probs, v bits on attention."""
    for module in list(model.modules()):
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            module.weight_quantizer = FakeQuantizer(w, qparams=module.weight.shape[0])
            module.input_quantizer = FakeQuantizer(a)
        elif isinstance(module, (Attention, WindowAttention)):
            for point, bits in zip(("q", "k", "probs", "v"), attn):
                setattr(module, f"{point}_quantizer", FakeQuantizer(bits))
    return model


def tiny_vit(**kw) -> VisionTransformer:
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=3, num_classes=3, embed_dim=8, depth=2, num_heads=2, **kw
    ).eval()


def tiny_swin() -> SwinTransformer:
    return SwinTransformer(
        img_size=16,
        patch_size=2,
        in_chans=3,
        num_classes=3,
        embed_dim=8,
        depths=(2, 2),
        num_heads=(1, 2),
        window_size=4,
    ).eval()


def stored_values(model: nn.Module) -> int:
    """Parameters + persistent buffers: exactly what the state dict holds."""
    return sum(t.numel() for t in model.state_dict().values())


def term(name: str) -> str:
    last = name.split(".")[-1]
    if name.startswith("patch_embed"):
        return "patch_embed"
    return {"reduction": "merging", "fc": "head"}.get(last, last)


def by_term(report) -> dict[str, int]:
    out = Counter()
    for r in report.layers:
        out[term(r.name)] += r.macs
    return dict(out)


# ---- (1) tiny models against a hand count, op by op ----------------------------------------------


def test_tiny_vit_hand_count():
    n, c, heads, hd, hidden = 17, 8, 2, 4, 32  # 16 patches + CLS
    block = {
        "attn.qkv": n * c * 3 * c,
        "attn.qk": 1 * heads * n * n * hd,
        "attn.av": 1 * heads * n * n * hd,
        "attn.proj": n * c * c,
        "mlp.fc1": n * c * hidden,
        "mlp.fc2": n * hidden * c,
    }
    expected = {"patch_embed.proj": 4 * 4 * c * 3 * 4 * 4}  # 4x4 positions × C_out × C_in × k²
    for i in range(2):
        expected |= {f"blocks.{i}.{k}": v for k, v in block.items()}
    expected["head"] = 1 * c * 3  # the classifier sees the CLS token only
    report = cost(tiny_vit())
    assert {r.name: r.macs for r in report.layers} == expected
    assert [r.name for r in report.layers] == list(expected)  # forward order, matmuls after qkv
    assert report.macs == sum(expected.values()) == 41_528
    assert report.bops == report.bops_fp32 == report.macs * 32 * 32 and report.rel_bops == 1.0
    assert report.input_size == 16


def test_tiny_swin_hand_count():
    # stage 0: 8x8 tokens, C=8, window 4 -> 4 windows of 16 tokens, 1 head of 8;
    # stage 1: 4x4 tokens, C=16 -> 1 window of 16 tokens, 2 heads of 8
    def stage(s: int, tokens: int, c: int, windows: int, heads: int) -> dict[str, int]:
        n, hd = 16, c // heads
        block = {
            "attn.qkv": tokens * c * 3 * c,
            "attn.qk": windows * heads * n * n * hd,
            "attn.av": windows * heads * n * n * hd,
            "attn.proj": tokens * c * c,
            "mlp.fc1": tokens * c * 4 * c,
            "mlp.fc2": tokens * 4 * c * c,
        }
        return {f"layers.{s}.blocks.{j}.{k}": v for j in range(2) for k, v in block.items()}

    expected = {"patch_embed.proj": 8 * 8 * 8 * 3 * 2 * 2}
    expected |= stage(0, 64, 8, 4, 1)
    expected["layers.1.downsample.reduction"] = 16 * 32 * 16  # 16 tokens, 4C -> 2C
    expected |= stage(1, 16, 16, 1, 2)
    expected["head.fc"] = 16 * 3
    report = cost(tiny_swin())
    assert {r.name: r.macs for r in report.layers} == expected
    assert report.macs == sum(expected.values()) == 260_144


# ---- (2) DeiT-Tiny and Swin-T at 224 against the formulas ---------------------------------------


def test_deit_tiny_224_exact():
    n, c, heads, hd, depth = 197, 192, 3, 64, 12
    expected = {
        "patch_embed": 14 * 14 * c * 3 * 16 * 16,
        "qkv": depth * n * c * 3 * c,
        "qk": depth * heads * n * n * hd,
        "av": depth * heads * n * n * hd,
        "proj": depth * n * c * c,
        "fc1": depth * n * c * 4 * c,
        "fc2": depth * n * 4 * c * c,
        "head": c * 1000,
    }
    report = cost(timm.create_model("deit_tiny_patch16_224", pretrained=False))
    assert by_term(report) == expected
    assert report.macs == sum(expected.values()) == 1_253_683_200


def test_swin_tiny_224_exact():
    expected = Counter({"patch_embed": 56 * 56 * 96 * 3 * 4 * 4, "head": 768 * 1000})
    for s, depth in enumerate((2, 2, 6, 2)):
        c, tokens, heads, hd = 96 * 2**s, (56 // 2**s) ** 2, 3 * 2**s, 32
        windows = tokens // 49
        expected["qkv"] += depth * tokens * c * 3 * c
        expected["qk"] += depth * windows * heads * 49 * 49 * hd
        expected["av"] += depth * windows * heads * 49 * 49 * hd
        expected["proj"] += depth * tokens * c * c
        expected["fc1"] += depth * tokens * c * 4 * c
        expected["fc2"] += depth * tokens * 4 * c * c
        if s > 0:  # patch merging at the start of stage s: tokens × 4C_(s-1) × 2C_(s-1)
            expected["merging"] += tokens * 2 * c * c
    report = cost(timm.create_model("swin_tiny_patch4_window7_224", pretrained=False))
    assert by_term(report) == dict(expected)
    assert report.macs == sum(expected.values()) == 4_490_566_656


# ---- (3) BOPs from the quantizer bits --------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_bops_w4a8_and_matmul_operand_bits(build):
    fp = cost(build())
    report = cost(attach_fake(build()))
    assert report.macs == fp.macs
    factor = {"linear": 4 * 8, "conv": 4 * 8, "qk": 6 * 5, "av": 4 * 3}
    for r in report.layers:
        key = r.name.rsplit(".", 1)[1] if r.kind == "matmul" else r.kind
        assert r.bops == r.macs * factor[key], r.name
        if r.kind == "matmul":
            assert (r.a_bits, r.a2_bits) == ((6.0, 5.0) if key == "qk" else (4.0, 3.0)) and r.w_bits is None
        else:
            assert (r.w_bits, r.a_bits, r.a2_bits) == (4.0, 8.0, None)
    assert report.bops == sum(r.bops for r in report.layers)
    assert report.rel_bops == report.bops / (report.macs * 1024)


def test_group_bits_counted_per_channel():
    model = attach_fake(tiny_vit())
    fc1 = model.blocks[0].mlp.fc1  # 8 -> 32: four groups of 8 output channels
    fc1.weight_quantizer = FakeQuantizer(4, group_bits=[2, 8, 4, 6], qparams=4)
    row = next(r for r in cost(model).layers if r.name == "blocks.0.mlp.fc1")
    per_channel_macs = 17 * 8
    assert row.macs == per_channel_macs * 32
    assert row.bops == per_channel_macs * 8 * (8 * (2 + 8 + 4 + 6))  # inputs at 8 bit
    assert row.w_bits == 5.0
    assert row.size_bits == 8 * 8 * (2 + 8 + 4 + 6) + 4 * 32  # 8 weights per channel + 4 scales


def test_disabled_or_32_bit_quantizers_count_as_float():
    model = attach_fake(tiny_vit())
    for m in model.modules():
        if isinstance(m, FakeQuantizer) and m.spec.bits == 4:
            m.enabled = False
        elif isinstance(m, FakeQuantizer):
            m.spec.bits = 32
    report = cost(model)
    assert report.bops == report.bops_fp32 and report.size_bytes == report.fp_size_bytes


# ---- (4) size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [tiny_vit, tiny_swin])
def test_fp_size_is_params_and_persistent_buffers_at_32_bit(build):
    model = build()
    model.register_buffer("extra_state", torch.zeros(5))  # persistent: counted
    model.register_buffer("scratch", torch.zeros(7), persistent=False)  # rebuilt on load: not counted
    report = cost(model)
    assert report.size_bytes == report.fp_size_bytes == 4 * stored_values(model)


def test_quantized_size_counts_bits_and_scales_not_quantizer_state():
    float_values = stored_values(tiny_vit())
    model = attach_fake(tiny_vit())
    report = cost(model)
    weights = [model.get_submodule(r.name).weight for r in report.layers if r.kind != "matmul"]
    weight_bits = sum(4 * w.numel() + 32 * w.shape[0] for w in weights)  # W4 + one scale per channel
    rest_bits = 32 * (float_values - sum(w.numel() for w in weights))
    assert report.size_bytes == -(-(weight_bits + rest_bits) // 8)
    assert report.fp_size_bytes == 4 * float_values  # the quantizers' own buffers are not model weights


# ---- (5) storage_bits hook ---------------------------------------------------------------------------


def test_storage_bits_replaces_weight_bits():
    base = cost(tiny_vit()).size_bytes
    model = tiny_vit()
    fc1 = model.blocks[0].mlp.fc1
    fc1.storage_bits = lambda: 1000  # e.g. 2:4 values + metadata
    assert cost(model).size_bytes == base - fc1.weight.numel() * 4 + 1000 // 8
    fc1.weight_quantizer = FakeQuantizer(8, qparams=32)  # the scale overhead still counts
    row = next(r for r in cost(model).layers if r.name == "blocks.0.mlp.fc1")
    assert row.size_bits == 1000 + 32 * 32


# ---- input size, call accounting, errors, helpers -----------------------------------------------------


def test_dynamic_img_size_counts_the_requested_size():
    report = cost(tiny_vit(dynamic_img_size=True), input_size=32)
    rows = {r.name: r.macs for r in report.layers}
    assert report.input_size == 32
    assert rows["blocks.0.attn.qk"] == 2 * 65 * 65 * 4  # 8x8 patches + CLS
    assert rows["patch_embed.proj"] == 8 * 8 * 8 * 3 * 16


def test_input_size_the_model_cannot_run_is_an_error():
    with pytest.raises(ConfigError, match="input_size"):
        cost(tiny_vit(), input_size=32)
    with pytest.raises(ConfigError, match="in_chans"):
        cost(tiny_vit(), in_chans=1)


def test_model_without_patch_embed_needs_input_size():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ConfigError, match="--input-size"):
        cost(model)
    report = cost(model, input_size=8)
    assert [r.macs for r in report.layers] == [6 * 6 * 4 * 3 * 3 * 3, 144 * 2]
    report = cost(nn.Sequential(nn.Conv2d(3, 4, 3)), input_size=(8, 12))  # height, width
    assert report.input_shape == (3, 8, 12) and report.macs == 6 * 10 * 4 * 27


def test_size_from_pretrained_cfg_and_a_size_the_model_cannot_run():
    model = nn.Sequential(nn.Conv2d(3, 4, 2, stride=2), nn.Flatten(), nn.Linear(4 * 2 * 2, 2))
    model.pretrained_cfg = {"input_size": (3, 4, 4)}
    assert cost(model).input_shape == (3, 4, 4)
    model.pretrained_cfg = {"input_size": (3, 8, 8)}  # stale: the model was built for 4x4
    with pytest.raises(ConfigError, match=r"--input-size.*3x8x8"):
        cost(model)
    assert cost(model, input_size=4).macs == 4 * 4 * 3 * 4 + 16 * 2


def test_every_call_counts():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(self.fc(x))

    assert cost(Twice(), input_size=2, in_chans=1).macs == 2 * 4 * 4


@pytest.mark.parametrize("need_weights", [False, True])  # the fused inference path, the explicit one
def test_multihead_attention_is_counted_from_what_runs(need_weights):
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 2, stride=2)  # 4x4 -> 2x2 = 4 tokens of 8
            self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            return self.mha(t, t, t, need_weights=need_weights)[0]

    n, c, heads, hd = 4, 8, 2, 4
    rows = {r.name: r.macs for r in cost(Tokens(), input_size=4).layers}
    assert rows == {
        "embed": 4 * 8 * 3 * 2 * 2,
        "mha.in_proj_weight": n * c * 3 * c,  # a raw parameter (not a module's weight)
        "mha.qk": heads * n * n * hd,
        "mha.av": heads * n * n * hd,
        "mha.out_proj": n * c * c,
    }


class Routed(nn.Module):
    """Attention written with F.linear on a child's weight, einsum, and quantizers called on the operands
    (names the cost model does not know: only the quantizer outputs that reach each product give its bits)."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.qkv, self.proj = nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.qkv.weight_quantizer = FakeQuantizer(4, qparams=3 * c)
        self.x_quantizer, self.a_quantizer, self.b_quantizer = FakeQuantizer(6), FakeQuantizer(5), FakeQuantizer(7)
        self.p_quantizer, self.c_quantizer = FakeQuantizer(3), FakeQuantizer(2)

    def forward(self, x):  # x: (B, C, H, W)
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = torch.nn.functional.linear(self.x_quantizer(t), self.qkv.weight, self.qkv.bias).chunk(3, -1)
        scores = torch.einsum("bnc,bmc->bnm", self.a_quantizer(q) * 0.5, self.b_quantizer(k))
        probs = self.p_quantizer(scores.softmax(-1))
        return self.proj(probs @ self.c_quantizer(v).contiguous())


def test_bits_come_from_the_quantizers_that_feed_each_product():
    report = cost(Routed(), input_size=4, in_chans=8)  # 16 tokens of 8 channels
    rows = {r.name: r for r in report.layers}
    assert list(rows) == ["qkv", "qk", "av", "proj"]
    n, c = 16, 8
    assert (rows["qkv"].macs, rows["qkv"].w_bits, rows["qkv"].a_bits) == (n * c * 3 * c, 4.0, 6.0)
    assert rows["qkv"].bops == rows["qkv"].macs * 4 * 6
    assert (rows["qk"].macs, rows["qk"].a_bits, rows["qk"].a2_bits) == (n * n * c, 5.0, 7.0)
    assert (rows["av"].macs, rows["av"].a_bits, rows["av"].a2_bits) == (n * n * c, 3.0, 2.0)
    assert rows["av"].bops == n * n * c * 3 * 2
    assert (rows["proj"].w_bits, rows["proj"].a_bits) == (32.0, 32.0)  # nothing quantizes it


def test_products_without_softmax_and_repeated_attention_are_numbered():
    class Linear(nn.Module):  # linear attention (EfficientViT's LiteMLA): no softmax
        def forward(self, x):
            t = x.flatten(2)  # (B, C, N)
            kv = t @ t.transpose(1, 2)  # (B, C, C)
            return kv @ t

    class TwoHeads(nn.Module):  # cascaded heads: one attention after the other in one call
        def forward(self, x):
            t = x.flatten(2).transpose(1, 2)
            for _ in range(2):
                t = (t @ t.transpose(1, 2)).softmax(-1) @ t
            return t

    names = [r.name for r in cost(nn.Sequential(Linear()), input_size=2, in_chans=3).layers]
    assert names == ["0.mm", "0.mm1"]
    names = [r.name for r in cost(nn.Sequential(TwoHeads()), input_size=2, in_chans=3).layers]
    assert names == ["0.qk", "0.av", "0.qk1", "0.av1"]


def test_fused_attention_is_its_two_products():
    class Fused(nn.Module):
        def forward(self, x):
            t = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, N, C)
            return torch.nn.functional.scaled_dot_product_attention(t, t, t[..., :2])

    rows = {r.name: r.macs for r in cost(nn.Sequential(Fused()), input_size=3, in_chans=4).layers}
    assert rows == {"0.qk": 9 * 9 * 4, "0.av": 9 * 9 * 2}


def test_probe_passes_quantizers_through_and_restores_state():
    model = attach_fake(tiny_vit()).train()
    model.blocks[1].eval()  # a mixed train/eval state must come back as it was

    class QuantIn(nn.Linear):  # a layer that does call its input quantizer
        def forward(self, x):
            return super().forward(self.input_quantizer(x))

    q = QuantIn(8, 3)
    q.input_quantizer = FakeQuantizer(8)
    model.head = q
    report = cost(model)
    assert report.layers[-1].name == "head" and report.layers[-1].a_bits == 8.0
    assert all(m.enabled for m in model.modules() if isinstance(m, FakeQuantizer))
    assert model.training and not model.blocks[1].training and model.blocks[0].training
    assert torch.is_grad_enabled()


def test_macs_by_block():
    vit = macs_by_block(tiny_vit())
    assert vit == {"patch_embed": 6144, "blocks.0": 17_680, "blocks.1": 17_680, "head": 24}
    swin = tiny_swin()
    blocks = macs_by_block(swin)
    assert list(blocks) == [
        "patch_embed",
        "layers.0.blocks.0",
        "layers.0.blocks.1",
        "layers.1.downsample",
        "layers.1.blocks.0",
        "layers.1.blocks.1",
        "head",
    ]
    assert blocks["layers.1.downsample"] == 16 * 32 * 16
    assert sum(blocks.values()) == cost(swin).macs


def test_table_and_json():
    report = cost(attach_fake(tiny_swin()))
    table = format_table(report)
    assert all(r.name in table for r in report.layers)
    assert "relative BOPs" in table and f"{report.macs:,}" in table
    d = json.loads(json.dumps(report.to_dict()))
    assert d["macs"] == report.macs and len(d["layers"]) == len(report.layers)
    assert d["layers"][0] == {**report.layers[0].__dict__}
