"""The Python example of docs/detection.md runs (it builds the default scenes: slow)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "detection.md"


@pytest.mark.slow
def test_detection_doc_example_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("pycocotools")
    monkeypatch.setenv("VITCOMPRESS_CACHE", str(tmp_path))
    (block,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    exec(compile(block, str(DOC), "exec"), {})
    bbox_map, bbox_map50, segm_map = (float(v) for v in capsys.readouterr().out.split())
    assert 0.0 <= bbox_map <= bbox_map50 <= 100.0 and 0.0 <= segm_map <= 100.0
