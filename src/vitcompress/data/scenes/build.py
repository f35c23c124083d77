"""Build the scene dataset into a cache folder, atomically, and find it again.

Layout of one build (COCO's): ``<cache>/scenes/<key>/{train,val}/NNNNNN.png`` (8-bit grey),
``annotations/instances_{train,val}.json`` (COCO instances with uncompressed-RLE masks), ``config.json``
(the :class:`SceneConfig`) and ``manifest.json`` (SHA-256 of every file). ``<key>`` hashes the config, so
builds with different options sit side by side.

A build writes into the sibling ``.<key>.partial-<pid>`` and renames it into place once complete: a
killed build leaves no folder that looks complete; the next build removes partial folders whose process
is gone.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from vitcompress.data.datasets import DEFAULT_FMNIST_ROOT, FMNIST_CLASSES, FashionMNIST, InputSpec
from vitcompress.data.scenes import rle
from vitcompress.data.scenes.compose import compose_scene
from vitcompress.data.scenes.config import SceneConfig
from vitcompress.io import write_json
from vitcompress.outputs import MANIFEST_FILE, swap_into_place, write_manifest

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "test"}  # scene split -> Fashion-MNIST split its items come from
CONFIG_FILE = "config.json"
CACHE_ENV = "VITCOMPRESS_CACHE"


def default_cache_dir() -> Path:
    """``$VITCOMPRESS_CACHE``, else ``$XDG_CACHE_HOME/vitcompress``, else ``~/.cache/vitcompress``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vitcompress"


def scenes_folder(config: SceneConfig, cache_dir: str | Path | None = None) -> Path:
    """The folder a build of ``config`` lives in (whether or not it exists yet)."""
    return Path(cache_dir or default_cache_dir()) / "scenes" / config.key()


def annotation_file(root: Path, split: str) -> Path:
    """The COCO annotation file of ``split`` in a built scene folder."""
    return root / "annotations" / f"instances_{split}.json"


def is_built(folder: Path, config: SceneConfig) -> bool:
    """``folder`` holds a complete build of ``config`` (its manifest, written last, and the same config)."""
    try:
        return (folder / MANIFEST_FILE).is_file() and json.loads((folder / CONFIG_FILE).read_text()) == config.as_dict()
    except (OSError, ValueError):
        return False


def ensure_scenes(
    config: SceneConfig | None = None, cache_dir: str | Path | None = None, data_root: str | Path | None = None
) -> Path:
    """The folder of ``config``'s scenes (None: the default :class:`SceneConfig`), built on first use."""
    config = config or SceneConfig()
    folder = scenes_folder(config, cache_dir)
    if is_built(folder, config):
        return folder
    return build_scenes(config, cache_dir, data_root, overwrite=folder.exists())


def build_scenes(
    config: SceneConfig | None = None,
    cache_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """(Re)build the scenes of ``config`` and return their folder.

    Args:
        config: sizes and look of the scenes (None: the default); the same config gives the same bytes.
        cache_dir: the cache folder (default :func:`default_cache_dir`).
        data_root: folder of the Fashion-MNIST idx files (default: Debian's dataset-fashion-mnist location).
        overwrite: rebuild when a complete build is already there (otherwise it is returned as it is).

    Raises:
        DataError: the Fashion-MNIST files are missing or malformed.
        OutputError: the cache cannot be written (disk full, no permission).
    """
    config = config or SceneConfig()
    folder = scenes_folder(config, cache_dir)
    if is_built(folder, config) and not overwrite:
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_partials(folder)
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_build(partial, config, Path(data_root) if data_root else DEFAULT_FMNIST_ROOT)
        _publish(partial, folder, config, overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("scenes %s built in %s", config.key(), folder)
    return folder


def _publish(partial: Path, folder: Path, config: SceneConfig, overwrite: bool) -> None:
    """Rename the complete build into place (a complete build another process published meanwhile is kept)."""
    if overwrite or not is_built(folder, config):
        swap_into_place(partial, folder)


def _write_build(partial: Path, config: SceneConfig, data_root: Path) -> None:
    (partial / "annotations").mkdir(parents=True)
    for i, (split, source_split) in enumerate(SPLITS.items()):
        source = FashionMNIST(data_root, source_split, InputSpec(img_size=28, in_chans=1))
        rng = np.random.default_rng([config.seed, i])
        coco = _write_split(partial, split, source.images.numpy(), source.targets.numpy(), config, rng)
        write_json(annotation_file(partial, split), coco)
    write_json(partial / CONFIG_FILE, config.as_dict())
    write_manifest(partial, {"writer": "vitcompress.data.scenes.build_scenes", "scene_config": config.as_dict()})


def _write_split(
    partial: Path, split: str, items: np.ndarray, labels: np.ndarray, config: SceneConfig, rng: np.random.Generator
) -> dict:
    """Draw and write the scenes of one split; return its COCO annotation dict."""
    (partial / split).mkdir()
    count = config.train_size if split == "train" else config.val_size
    images, annotations = [], []
    for i in tqdm(range(count), total=count, desc=f"scenes {split}", leave=False, mininterval=1.0):
        image, instances = compose_scene(items, labels, config, rng)
        name = f"{split}/{i:06d}.png"
        Image.fromarray(image, mode="L").save(partial / name)
        images.append({"id": i + 1, "file_name": name, "width": config.image_size, "height": config.image_size})
        for inst in instances:
            segmentation = rle.encode(inst.mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": inst.label + 1,
                    "bbox": rle.bbox(inst.mask),
                    "area": float(rle.area(segmentation)),
                    "segmentation": segmentation,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"vitcompress scenes from Fashion-MNIST, {split}", "scene_config": config.as_dict()},
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": c + 1, "name": name, "supercategory": "fashion"} for c, name in enumerate(FMNIST_CLASSES)
        ],
    }


def _remove_dead_partials(folder: Path) -> None:
    """Remove the partial builds of ``folder`` left by processes that no longer run (killed builds)."""
    for partial in folder.parent.glob(f".{folder.name}.partial-*"):
        pid = partial.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
