"""``SceneConfig``: what the embedded detection scenes look like and how many there are."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from vitcompress.errors import ConfigError
from vitcompress.options import option
from vitcompress.validate import integer, number, one_of, positive_int, version

BACKGROUNDS = ("plain", "texture", "mixed")


@dataclass(frozen=True)
class SceneConfig:
    """The scene dataset built from Fashion-MNIST: sizes, item counts and scales, background, seed.

    The default 224-pixel scenes give a Swin with 4-pixel patches and 7x7 windows 8 x 8 = 64 windows in its
    first stage. The same config always builds the same files (same bytes).

    Attributes:
        image_size: side of the square scenes, in pixels
        train_size: scenes of the train split (items drawn from the Fashion-MNIST training images)
        val_size: scenes of the val split (items drawn from the Fashion-MNIST test images)
        min_items: fewest items drawn per scene (an item that finds no place is dropped)
        max_items: most items drawn per scene
        min_item_size: smallest item side, in pixels (the 28-pixel item is resized to it)
        max_item_size: largest item side, in pixels
        max_occlusion: largest fraction of an item's pixels that later items may cover; a placement that
            would hide more is drawn again (and the item dropped after 20 draws)
        background: plain (one grey level per scene), texture (smooth noise), or mixed (half each)
        seed: seeds every random draw of the build
    """

    image_size: int = 224
    train_size: int = 4000
    val_size: int = 500
    min_items: int = 2
    max_items: int = 6
    min_item_size: int = 24
    max_item_size: int = 160
    max_occlusion: float = 0.5
    background: str = option("mixed", choices=BACKGROUNDS)
    seed: int = 0
    version: int = option(1, cli=False)

    def __post_init__(self) -> None:
        version("SceneConfig", self.version)
        integer("image_size", self.image_size, minimum=32)
        for name in ("train_size", "val_size", "min_items", "max_items"):
            positive_int(name, getattr(self, name))
        if self.max_items < self.min_items:
            raise ConfigError(f"max_items must be >= min_items ({self.min_items}), got {self.max_items}")
        integer("min_item_size", self.min_item_size, minimum=8, maximum=self.image_size)
        integer("max_item_size", self.max_item_size, minimum=self.min_item_size, maximum=self.image_size)
        number("max_occlusion", self.max_occlusion, low=0, high=1)
        one_of("background", self.background, BACKGROUNDS)
        integer("seed", self.seed, minimum=0)

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A short hash of every field: the name of this config's cache folder."""
        text = json.dumps(self.as_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SceneBuildOptions:
    """Where a scene build goes (the options of the build command, next to :class:`SceneConfig`'s).

    Attributes:
        cache_dir: folder holding the builds (default: $VITCOMPRESS_CACHE, else ~/.cache/vitcompress)
        overwrite: rebuild when a complete build of these options is already there
    """

    cache_dir: str | None = option(None, metavar="DIR")
    overwrite: bool = False
