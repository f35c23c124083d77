"""Output folders as transactions, with a manifest of what wrote them.

A run never writes into its output folder ``OUT`` directly: it works in the sibling ``OUT.partial``
(where a killed run's resumable state stays) and, once every file is written, swaps it into place. A
kill therefore leaves the old complete result or the new complete result, never a mix. The swap is two
renames (``OUT`` aside, ``OUT.partial`` to ``OUT``); a kill between them leaves no ``OUT`` and the new
result complete in ``OUT.partial``, which ``--resume`` finishes.

Every folder written this way carries ``manifest.json``: the writer, the time and the SHA-256 of every
file. :func:`verify_manifest` refuses a folder whose files disagree with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vitcompress.errors import CheckpointError, ConfigError
from vitcompress.io import OutputError, write_json

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_TYPE = "vitcompress.Manifest"
PARTIAL_SUFFIX = ".partial"


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, writer: dict[str, Any]) -> None:
    """Write ``folder/manifest.json``: ``writer`` (what wrote it) and the hash of every file below ``folder``."""
    from vitcompress import __version__

    files = {
        p.relative_to(folder).as_posix(): sha256_of(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE and not p.name.endswith(".tmp")
    }
    write_json(
        folder / MANIFEST_FILE,
        {
            "type": MANIFEST_TYPE,
            "version": 1,
            "vitcompress": __version__,
            "written": time.time(),
            **writer,
            "files": files,
        },  # fmt: skip
    )


def verify_manifest(folder: Path) -> bool:
    """Check ``folder``'s files against its manifest; False when it has none (written before manifests).

    Raises:
        CheckpointError: a listed file is missing or its content differs (named), or the manifest is unreadable.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"] if manifest.get("type") == MANIFEST_TYPE else None
    except (ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{path} is not a vitcompress manifest: {e}") from None
    if not isinstance(files, dict):
        raise CheckpointError(f"{path} is not a vitcompress manifest")
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{folder} is incomplete: {name} is missing (listed in its manifest)")
        if sha256_of(file) != digest:
            raise CheckpointError(f"{folder} is inconsistent: {name} is not the file its manifest lists")
    return True


def swap_into_place(partial: Path, out: Path) -> None:
    """Make the complete folder ``partial`` become ``out`` (replacing an old ``out``)."""
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
    os.replace(partial, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def partial_of(out: Path) -> Path:
    """Where a run into ``out`` works until it is complete."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def check_output_folder(out: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, an output folder this run may not write (one line naming it).

    Raises:
        ConfigError: ``out`` is a file or cannot be created; it holds an earlier result and neither
            ``overwrite`` nor ``resume`` was given; an unfinished run waits in ``OUT.partial``; ``resume``
            with nothing to resume.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a folder")
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(f"out: cannot create {out}: {parent} is not a writable folder")
    partial, held = partial_of(out), out.is_dir() and any(out.iterdir())
    if resume:
        if not held and not partial.is_dir():
            raise ConfigError(f"resume: nothing to resume: neither {out} nor {partial} exists")
        return
    if overwrite:
        return
    if partial.is_dir():
        raise ConfigError(f"out: an unfinished run is in {partial}: --resume continues it, --overwrite starts over")
    if held:
        raise ConfigError(f"out: {out} holds an earlier result: --overwrite replaces it, --resume continues its run")


def check_free_space(out: Path, needed: int) -> None:
    """Refuse to start when the disk holding ``out`` has less than ``needed`` bytes free."""
    parent = next(p for p in out.absolute().parents if p.exists()) if not out.exists() else out
    free = shutil.disk_usage(parent).free
    if free < needed:
        need = f"this run needs about {needed / 2**20:.0f} MiB"
        raise ConfigError(f"out: {parent} has {free / 2**20:.0f} MiB free; {need}")


def begin(out: Path, *, overwrite: bool, resume: bool) -> Path:
    """Create the working folder of a run into ``out`` and return it (``OUT.partial``).

    A resumed run continues ``OUT.partial``, or a copy of a complete ``OUT`` (its state files); an
    overwriting run starts from an empty one.
    """
    partial = partial_of(out)
    if partial.is_dir() and not resume:
        shutil.rmtree(partial)
    if not partial.is_dir():
        if resume and out.is_dir():
            shutil.copytree(out, partial)
            (partial / MANIFEST_FILE).unlink(missing_ok=True)
        else:
            partial.mkdir(parents=True)
    return partial


def commit(partial: Path, out: Path, writer: dict[str, Any]) -> None:
    """Write the manifest of the complete ``partial`` and swap it into ``out``."""
    write_manifest(partial, writer)
    try:
        swap_into_place(partial, out)
    except OSError as e:
        raise OutputError(f"cannot move {partial} to {out}: {e.strerror or e}") from None


__all__ = ["OutputError", "begin", "check_free_space", "check_output_folder", "commit", "verify_manifest"]
