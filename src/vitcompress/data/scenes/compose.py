"""One scene: Fashion-MNIST items pasted at random positions, scales and overlaps on a background.

An item's pixels are the resized 28-pixel image's pixels brighter than :data:`ITEM_THRESHOLD`; they are
pasted opaque, later items over earlier ones, so each instance's mask is exactly the pixels of it that
stay visible (occlusion handled by construction) and its box is the box of that mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from vitcompress.data.scenes.config import SceneConfig

ITEM_THRESHOLD = 24  # grey level above which a resized item pixel belongs to the item (the rest is its black surround)
MIN_ITEM_PIXELS = 16  # an item (after resizing) with fewer pixels is drawn again
PLACEMENT_TRIES = 20


@dataclass
class Instance:
    """One pasted item: its Fashion-MNIST class (0..9) and the mask of its visible pixels."""

    label: int
    mask: np.ndarray  # (H, W) bool, visible pixels
    pixels: int  # pixels when pasted, before later items covered some


def background(size: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A (size, size) float background: one grey level, or smooth noise (bilinear upsampled coarse grid)."""
    if kind == "mixed":
        kind = "plain" if rng.random() < 0.5 else "texture"
    base = rng.uniform(0, 48)
    if kind == "plain":
        return np.full((size, size), base, dtype=np.float32)
    grid = int(rng.integers(3, 13))
    coarse = rng.uniform(0, rng.uniform(16, 64), size=(grid, grid)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
    fine = rng.normal(0, 4, size=(size, size)).astype(np.float32)
    return base + smooth + fine


def _resized_item(item: np.ndarray, config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """The 28-pixel item resized to a log-uniform side with an aspect ratio in [3/4, 4/3]."""
    side = np.exp(rng.uniform(np.log(config.min_item_size), np.log(config.max_item_size)))
    aspect = np.exp(rng.uniform(np.log(0.75), np.log(4 / 3)))
    w = int(np.clip(round(side * np.sqrt(aspect)), 8, config.image_size))
    h = int(np.clip(round(side / np.sqrt(aspect)), 8, config.image_size))
    return np.asarray(Image.fromarray(item).resize((w, h), Image.BILINEAR))


def _fits(instances: list[Instance], cover: np.ndarray, max_occlusion: float) -> bool:
    """No earlier instance keeps less than ``1 - max_occlusion`` of its pixels once ``cover`` is pasted."""
    keep = 1.0 - max_occlusion
    return all((inst.mask & ~cover).sum() >= keep * inst.pixels for inst in instances)


def _place(
    item: np.ndarray, instances: list[Instance], config: SceneConfig, rng: np.random.Generator
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Where ``item`` goes (random position, occlusion bounded): its window and full-image mask, or None."""
    size = config.image_size
    inside = item > ITEM_THRESHOLD
    if inside.sum() < MIN_ITEM_PIXELS:
        return None
    h, w = item.shape
    for _ in range(PLACEMENT_TRIES):
        y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        cover = np.zeros((size, size), dtype=bool)
        cover[y : y + h, x : x + w] = inside
        if _fits(instances, cover, config.max_occlusion):
            return (slice(y, y + h), slice(x, x + w)), cover
    return None


def compose_scene(
    items: np.ndarray, labels: np.ndarray, config: SceneConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[Instance]]:
    """Draw one scene.

    Args:
        items: (N, 28, 28) uint8 Fashion-MNIST images to draw from.
        labels: (N,) their classes.
        config: scene size, item count and scale range, occlusion bound, background.
        rng: the build's random stream (consumed in a fixed order: the same stream gives the same scene).

    Returns:
        The (size, size) uint8 scene and its visible instances, in paste order (every mask non-empty).
    """
    size = config.image_size
    canvas = background(size, config.background, rng)
    instances: list[Instance] = []
    for _ in range(int(rng.integers(config.min_items, config.max_items + 1))):
        index = int(rng.integers(len(items)))
        item = _resized_item(items[index], config, rng)
        placed = _place(item, instances, config, rng)
        if placed is None:
            continue
        window, cover = placed
        canvas[window] = np.where(cover[window], item, canvas[window])
        for inst in instances:
            inst.mask &= ~cover
        instances.append(Instance(int(labels[index]), cover, int(cover.sum())))
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, [inst for inst in instances if inst.mask.any()]  # max_occlusion 1 may hide an item whole
