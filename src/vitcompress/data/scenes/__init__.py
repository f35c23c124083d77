"""Embedded detection scenes built from Fashion-MNIST: several items per scene at random positions, scales
and overlaps on a plain or textured background, with boxes and instance masks in COCO format."""

from vitcompress.data.scenes.build import build_scenes, default_cache_dir, ensure_scenes, scenes_folder
from vitcompress.data.scenes.config import SceneBuildOptions, SceneConfig
from vitcompress.data.scenes.dataset import SceneDataset, collate_detection, load_scenes

__all__ = [
    "SceneBuildOptions",
    "SceneConfig",
    "SceneDataset",
    "build_scenes",
    "collate_detection",
    "default_cache_dir",
    "ensure_scenes",
    "load_scenes",
    "scenes_folder",
]
