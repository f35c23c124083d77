"""A detector's transformer and pyramid as a block chain (``vitcompress.models.detection.chain``)."""

from __future__ import annotations

import pytest
import torch

from tiny_detection import tiny_detector
from vitcompress.errors import ConfigError
from vitcompress.models.chain import model_chain
from vitcompress.models.detection.chain import flat


@pytest.mark.parametrize("backbone", ["swin", "vit"])
def test_the_chain_reproduces_the_pyramid_and_restarts_at_any_step(backbone, one_thread):
    model = tiny_detector(backbone)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    chain = model_chain(model, "pre_logits", check=x)  # check: equal to the backbone's own pyramid, exactly
    with torch.no_grad():
        want = flat(model.backbone(model.transform.normalize(x)))
        cached, out = chain.inputs(x)
        assert torch.equal(out, want)
        for start in range(len(chain.steps)):
            assert torch.equal(chain.run(cached[start], start=start), want)
    layer = "backbone.body.layers.2.blocks.0.mlp.fc1" if backbone == "swin" else "backbone.body.blocks.0.attn.qkv"
    step = "backbone.body.layers.2.blocks.0" if backbone == "swin" else "backbone.body.blocks.0"
    assert chain.names[chain.step_of(layer)] == step
    assert chain.step_of("roi_heads.box_head.fc6") is None  # the heads are not in the chain


def test_a_detector_chain_takes_only_the_pyramid_as_target():
    with pytest.raises(ConfigError, match="pyramid"):
        model_chain(tiny_detector("vit"), "logits")
