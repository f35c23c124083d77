"""Detectors on ViT and Swin backbones built from timm classes, with torchvision's detection heads."""

from vitcompress.models.detection.backbones import SwinFPN, ViTSimplePyramid, build_backbone
from vitcompress.models.detection.config import BACKBONES, HEADS, DetectorConfig
from vitcompress.models.detection.detector import build_detector, is_detector

__all__ = [
    "BACKBONES",
    "HEADS",
    "DetectorConfig",
    "SwinFPN",
    "ViTSimplePyramid",
    "build_backbone",
    "build_detector",
    "is_detector",
]
