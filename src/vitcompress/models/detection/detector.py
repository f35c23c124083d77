"""``build_detector``: a torchvision detector (Faster/Mask R-CNN, FCOS, RetinaNet) on a timm backbone.

Train mode: ``model(images, targets)`` returns the dict of losses; eval mode: ``model(images)`` returns one
dict per image (``boxes`` x1, y1, x2, y2; ``scores``; ``labels`` = COCO category ids 1..num_classes;
``masks`` (K, 1, H, W) for Mask R-CNN), as :func:`vitcompress.eval.detection.evaluate_detection` reads.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign

from vitcompress.models.detection.backbones import Upsample2x, build_backbone
from vitcompress.models.detection.config import DetectorConfig
from vitcompress.nn.edges import HEADS_ATTR

LEVELS = ("0", "1", "2", "3")  # strides 4..32 (RoI pooling); the anchors also cover "pool" (stride 64)
ANCHOR_SIZES = ((16,), (32,), (64,), (128,), (256,))  # one per level: the default scenes' items are ~20..185 px
ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)


def build_detector(config: DetectorConfig | None = None) -> nn.Module:
    """A detector of ``config`` (None: the default Swin Mask R-CNN) with random weights, in train mode."""
    config = config or DetectorConfig()
    backbone = build_backbone(config)
    common = {
        "min_size": config.image_size,
        "max_size": config.image_size,
        "image_mean": [config.mean] * config.in_chans,
        "image_std": [config.std] * config.in_chans,
    }
    classes = config.num_classes + 1  # torchvision counts the background class
    if config.head in ("fcos", "retinanet"):
        return _dense(config, backbone, classes, common)
    c = backbone.out_channels
    box = {
        "rpn_anchor_generator": AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS),
        "box_roi_pool": MultiScaleRoIAlign(list(LEVELS), output_size=7, sampling_ratio=2),
        "box_head": TwoMLPHead(c * 7 * 7, 2 * c),
        "box_predictor": FastRCNNPredictor(2 * c, classes),
        "box_batch_size_per_image": config.roi_batch,
        "rpn_post_nms_top_n_test": config.test_proposals,
    }
    if config.head == "faster_rcnn":
        model = FasterRCNN(backbone, **box, **common)
    else:
        mask = {
            "mask_roi_pool": MultiScaleRoIAlign(list(LEVELS), output_size=14, sampling_ratio=2),
            "mask_head": MaskRCNNHeads(c, (c, c, c, c), 1),
            "mask_predictor": mask_predictor(c, classes),
        }
        model = MaskRCNN(backbone, **box, **mask, **common)
    return _describe(model, config)


def mask_predictor(channels: int, classes: int) -> nn.Sequential:
    """torchvision's Mask R-CNN predictor (2x upsampling, ReLU, 1x1 logits per class, same module names) with
    the upsampling as :class:`Upsample2x`, so that the quantization converters know every layer of it."""
    head = nn.Sequential(
        OrderedDict(
            conv5_mask=Upsample2x(channels, channels),
            relu5_mask=nn.ReLU(inplace=True),
            mask_fcn_logits=nn.Conv2d(channels, classes, 1),
        )
    )
    for m in head.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's initialisation of its predictor
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return head


def _dense(config: DetectorConfig, backbone: nn.Module, classes: int, common: dict) -> nn.Module:
    """FCOS (one anchor point per location) or RetinaNet (three aspect ratios) over the five levels."""
    if config.head == "fcos":
        anchors = AnchorGenerator(tuple((s // 2,) for (s,) in ANCHOR_SIZES), ((1.0,),) * len(ANCHOR_SIZES))
        model = FCOS(backbone, classes, anchor_generator=anchors, **common)
    else:
        model = RetinaNet(backbone, classes, anchor_generator=AnchorGenerator(ANCHOR_SIZES, ASPECT_RATIOS), **common)
    return _describe(model, config)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """The detector's layers after the transformer: the pyramid (``backbone.fpn``, or ViTDet's
    ``backbone.up4``, ``up8``, ``levels``) and the detection heads (``rpn``, ``roi_heads``; ``head``)."""
    names = [f"backbone.{n}" for n, m in model.backbone.named_children() if n != "body"]
    names += [n for n, m in model.named_children() if n not in ("backbone", "transform")]
    modules = dict(model.named_modules())
    return tuple(n for n in names if any(True for _ in modules[n].parameters()))


def _describe(model: nn.Module, config: DetectorConfig) -> nn.Module:
    """What the rest of the toolkit reads off a detector: its config, how to rebuild it, its input size
    (``img_size``, as :mod:`vitcompress.models.inputs` reads it) and its heads (``@head`` in a recipe: every
    layer after the transformer, kept at 8 bit by the presets)."""
    model.detector_config = config
    model.vitcompress_source = config.source()
    model.img_size = config.image_size
    setattr(model, HEADS_ATTR, head_names(model))
    return model


def is_detector(model: nn.Module) -> bool:
    """``model`` is a torchvision detector (takes a list of images, returns boxes; evaluated with COCO AP)."""
    return isinstance(model, (GeneralizedRCNN, FCOS, RetinaNet))
