"""GPUSQ-ViT distillation losses: terms, switches, feature points, weight factors, mismatch errors."""

import copy

import pytest
import timm
import torch
import torch.nn.functional as F

from tiny_models import tiny_swin
from vitcompress.errors import ConfigError
from vitcompress.sparsity import sparsify_
from vitcompress.train.distill import DistillConfig, DistillLoss, feature_points, soft_logit_loss, weight_factors

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vit(depth=3, **kw):
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=depth,
        num_heads=2,
        num_classes=10,
        **kw,
    )


def test_feature_points_vit_and_swin():
    assert feature_points(tiny_vit(depth=6), 3) == [
        ("patch", "patch_embed"),
        ("stage1", "blocks.1"),
        ("stage2", "blocks.3"),
        ("stage3", "blocks.5"),
        ("final", "norm"),
    ]
    assert feature_points(tiny_swin()) == [
        ("patch", "patch_embed"),
        ("stage1", "layers.0.blocks.0"),
        ("stage2", "layers.1.blocks.0"),
        ("final", "norm"),
    ]


def test_loss_equals_the_formula_and_switches_drop_terms():
    teacher, student = tiny_vit(), tiny_vit()
    sparsify_(student, "2:4")
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    cfg = DistillConfig(temperature=3.0)
    loss_fn = DistillLoss(teacher, student, cfg)
    loss, logs = loss_fn(student, x, y)
    with torch.no_grad():
        t, s = teacher(x), student(x)
    hard = F.cross_entropy(s, y)
    p_t = F.softmax(t.double() / 3, -1)
    soft = (p_t * (p_t.log() - F.log_softmax(s.double() / 3, -1))).sum(-1).mean()  # tiny: untrained logits
    assert logs["hard"] == pytest.approx(hard.item(), rel=1e-5)
    assert logs["soft"] == pytest.approx(soft.item(), rel=1e-2, abs=1e-7)  # float32 KL of near-equal logits
    # stage 1 feature loss: MSE(patch) + Σ θ_i MSE(stage i) + MSE(final) with θ = 1
    feats = loss_fn.feature_terms()
    assert len(feats) == 5 and logs["feat"] == pytest.approx(float(sum(feats)), rel=1e-6)
    assert loss.item() == pytest.approx(hard.item() + 10 * soft.item() + 5 * logs["feat"], rel=1e-5)
    loss_fn.close()
    only_hard = DistillLoss(teacher, student, DistillConfig(soft=False, feature=False))
    loss, logs = only_hard(student, x, y)
    assert set(logs) == {"hard", "loss"} and loss.item() == pytest.approx(hard.item(), rel=1e-6)
    unsup = DistillLoss(teacher, student, DistillConfig(unsupervised=True, soft=False, feature=False))
    assert unsup(student, x, y)[1]["hard"] == pytest.approx(F.cross_entropy(s, t.argmax(-1)).item(), rel=1e-5)
    assert soft_logit_loss(t, t, 2.0).abs().item() < 1e-6


def test_theta_weights_stage_terms_and_gradient_reaches_student():
    teacher, student = tiny_vit(), tiny_vit()
    sparsify_(student, "2:4")
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    loss_fn = DistillLoss(teacher, student, DistillConfig(hard=False, soft=False, stage_factors=(2.0, 0.0, 1.0)))
    loss, logs = loss_fn(student, x, y)
    f = [t.detach() for t in loss_fn.feature_terms()]
    assert logs["feat"] == pytest.approx((f[0] + 2 * f[1] + 0 * f[2] + f[3] + f[4]).item(), rel=1e-6)
    loss.backward()
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    with pytest.raises(ConfigError, match="stage_factors needs 3 values"):
        DistillLoss(teacher, student, DistillConfig(stage_factors=(1.0,)))


def test_weight_factors_sum_to_one_and_follow_the_feature_errors():
    teacher = tiny_vit()
    student = copy.deepcopy(teacher)
    sparsify_(student, "2:4")
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    w = weight_factors(teacher, student, batches, DistillConfig())
    assert len(w) == 5 and sum(w) == pytest.approx(1.0)
    assert w[0] > 0  # the sparse patch embedding changes the first feature
    off = weight_factors(teacher, student, batches, DistillConfig(weight_factors=False))
    assert off == [0.2] * 5
    same = weight_factors(teacher, copy.deepcopy(teacher), batches, DistillConfig())
    assert same == [0.2] * 5  # no error anywhere: no preference


def test_architecture_mismatch_names_the_feature():
    with pytest.raises(ConfigError, match="mismatch at feature 'stage1': teacher blocks.1 vs student blocks.0"):
        DistillLoss(tiny_vit(depth=6), tiny_vit(depth=3), DistillConfig())
    wide = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=64,
        depth=3,
        num_heads=2,
        num_classes=10,
    )
    student = tiny_vit()
    loss_fn = DistillLoss(wide, student, DistillConfig())
    with pytest.raises(ConfigError, match=r"feature 'patch' \(patch_embed\): teacher shape \(2, 16, 64\)"):
        loss_fn(student, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
