"""The lint the test command runs: ruff's rules (pyproject.toml, complexity limit C901 included) and its format."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
pytestmark = pytest.mark.skipif(RUFF is None, reason="ruff is not installed (the dev extra)")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RUFF, *args, "src", "tests", "benchmarks"], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_passes():
    r = _ruff("check", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_check_passes():
    r = _ruff("format", "--check", "--no-cache")
    assert r.returncode == 0, r.stdout + r.stderr
