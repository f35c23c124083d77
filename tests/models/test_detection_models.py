"""Detectors on timm backbones (``vitcompress.models.detection``): shapes, losses, detections, timm modules."""

from __future__ import annotations

import pytest
import torch
from timm.layers import Attention, Mlp
from timm.models.swin_transformer import WindowAttention

from vitcompress.errors import ConfigError
from vitcompress.models.detection import DetectorConfig, build_backbone, build_detector, is_detector

TINY = {
    "swin": dict(image_size=64, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4),
    "vit": dict(image_size=64, embed_dim=32, depths=(1,), num_heads=(2,)),
}


def tiny(backbone: str, head: str = "faster_rcnn") -> DetectorConfig:
    return DetectorConfig(backbone=backbone, head=head, fpn_channels=32, **TINY[backbone])


def _batch(n: int = 2, size: int = 64):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, size, size, generator=g) for _ in range(n)]
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 4:30, 6:20] = 1
    masks[1, 30:60, 28:62] = 1
    target = {
        "boxes": torch.tensor([[6.0, 4.0, 20.0, 30.0], [28.0, 30.0, 62.0, 60.0]]),
        "labels": torch.tensor([3, 7]),
        "masks": masks,
    }
    return images, [dict(target) for _ in range(n)]


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_backbone_gives_five_levels_at_strides_4_to_64(backbone, one_thread):
    net = build_backbone(tiny(backbone)).eval()
    with torch.no_grad():
        out = net(torch.rand(2, 1, 64, 64))
    assert list(out) == ["0", "1", "2", "3", "pool"]
    assert [tuple(f.shape) for f in out.values()] == [(2, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]


def test_default_swin_detector_has_64_windows_in_stage_one():
    c = DetectorConfig()
    assert c.head == "mask_rcnn" and ((c.image_size // c.patch_size) // c.window_size) ** 2 == 64


@pytest.mark.parametrize(
    "backbone, head",
    [("swin", "mask_rcnn"), ("vit", "mask_rcnn"), ("swin", "faster_rcnn"), ("vit", "fcos"), ("swin", "retinanet")],
)
def test_train_mode_returns_losses_and_eval_mode_detections(backbone, head, one_thread):
    torch.manual_seed(0)
    model = build_detector(tiny(backbone, head))
    images, targets = _batch()
    model.train()
    losses = model(images, targets)
    assert losses and all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    if head == "mask_rcnn":
        assert "loss_mask" in losses
    sum(losses.values()).backward()
    assert model.backbone.body.patch_embed.proj.weight.grad is not None  # the loss reaches the backbone
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and {"boxes", "scores", "labels"} <= set(out[0])
    assert out[0]["boxes"].shape[1:] == (4,) and ((out[0]["labels"] >= 1) & (out[0]["labels"] <= 10)).all()
    assert ("masks" in out[0]) == (head == "mask_rcnn")


@pytest.mark.parametrize("backbone, kind", [("swin", WindowAttention), ("vit", Attention)])
def test_backbone_keeps_timm_attention_and_mlp_modules(backbone, kind):
    model = build_detector(tiny(backbone))
    assert is_detector(model) and not is_detector(model.backbone.body)
    blocks = sum(tiny(backbone).depths)
    assert sum(isinstance(m, kind) for m in model.backbone.body.modules()) == blocks
    assert sum(isinstance(m, Mlp) for m in model.backbone.body.modules()) == blocks


def test_bad_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="head"):
        DetectorConfig(head="yolo")
    with pytest.raises(ConfigError, match="depths"):
        DetectorConfig(backbone="swin", depths=(2, 2))
    with pytest.raises(ConfigError, match="image_size"):
        DetectorConfig(backbone="vit", image_size=200)
    with pytest.raises(ConfigError, match="fpn_channels"):
        DetectorConfig(head="fcos", fpn_channels=48)
    with pytest.raises(ConfigError, match="window_size"):
        DetectorConfig(backbone="swin", window_size=5)
    with pytest.raises(ConfigError, match="roi_batch"):
        DetectorConfig(roi_batch=0)
    with pytest.raises(ConfigError, match="test_proposals"):
        DetectorConfig(test_proposals=-1)


def test_roi_sampling_and_proposals_reach_torchvision():
    model = build_detector(DetectorConfig(backbone="vit", head="faster_rcnn", roi_batch=64, test_proposals=50))
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64
    assert model.rpn._post_nms_top_n == {"training": 2000, "testing": 50}


def _train(model, images, targets, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(steps):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    return history


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_a_few_dozen_steps_reduce_the_loss(backbone, one_thread):
    torch.manual_seed(0)
    model = build_detector(tiny(backbone, "mask_rcnn"))
    images, targets = _batch()
    history = _train(model, images, targets, steps=40)
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.7 * first, history  # the same batch: the loss must fall by 30 % or more


def test_upsample2x_is_a_2x2_stride_2_transposed_convolution():
    from vitcompress.models.detection.backbones import Upsample2x

    up, deconv = Upsample2x(3, 2), torch.nn.ConvTranspose2d(3, 2, 2, stride=2)
    w = up[0].weight.detach().view(2, 2, 2, 3)  # (out, a, b, in): channel 4o + 2a + b
    deconv.weight.data.copy_(w.permute(3, 0, 1, 2))  # (in, out, a, b)
    deconv.bias.data.copy_(up[0].bias.detach().view(2, 4)[:, 0])
    up[0].bias.data.copy_(deconv.bias.detach().repeat_interleave(4))
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(up(x), deconv(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_the_quantization_converters_take_every_layer_of_the_detector(backbone, one_thread):
    from vitcompress.config import resolve_recipe
    from vitcompress.nn.convert import attention_summary, float_modules, prepare

    model = build_detector(tiny(backbone, "mask_rcnn")).eval()
    prepare(model, resolve_recipe("w8a8"), example_input=torch.rand(1, 1, 64, 64))  # unknown layers: error
    assert float_modules(model) == []
    summary = attention_summary(model)
    assert summary.attention_modules == summary.quantized_attention == sum(tiny(backbone).depths)
