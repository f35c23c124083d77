"""Atomic file output: write to a temporary file in the same folder, then rename over the target.

A process killed midway leaves either the old file or no file, never a half-written one that
looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitcompress.errors import DataError, VitCompressError


class OutputError(VitCompressError):
    """An output could not be written (disk full, file too large, no permission): one line naming it."""


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, else removed.

    The file gets the usual permissions (0666 less the umask), whatever wrote the temporary path.

    Raises:
        DataError: the folder does not exist.
        OutputError: the file could not be written (disk full, file too large, no permission).
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise DataError(f"output folder {path.parent} does not exist")
    umask = os.umask(0)
    os.umask(umask)
    tmp_path = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~umask)  # after the write: a writer may have replaced the file (mkstemp: 0600)
        os.replace(tmp_path, path)
    except Exception as e:
        if not _write_failure(e):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise OutputError(f"cannot write {path}: {reason}") from None
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def _write_failure(e: Exception) -> bool:
    """An OSError, or a writer library's wrapped I/O error (safetensors raises SafetensorError "I/O error: ...")."""
    return isinstance(e, OSError) or (type(e).__name__ == "SafetensorError" and "I/O error" in str(e))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON (indented, keys in insertion order) atomically."""
    write_text(path, json.dumps(obj, indent=2) + "\n")
