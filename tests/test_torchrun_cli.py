"""``torchrun --nproc-per-node 2 -m vitcompress.cli compress evolq`` writes what one process writes.

Under torchrun every rank runs the job, the Evol-Q fitness is split across the ranks, and only rank 0
checks, writes and commits the output folder and prints. The result must equal the one-process run bit
for bit: the same scales (model weights and quantizer buffers, tolerance 0) and the same search history
(timings aside). Slow: two runs of the real command on the zoo model (~1 min on a quiet 2-core machine).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ARGS = [
    "--threads", "1", "--no-progress", "compress", "evolq", "--model", "vit-fmnist", "--recipe", "w8a8",
    "--passes", "1", "--cycles", "2", "--calib-size", "64", "--batch-size", "32", "--limit", "100",
]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_torchrun_two_ranks_write_what_one_process_writes(tmp_path: Path):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed next to this python")
    one = _run([sys.executable, "-m", "vitcompress.cli", *ARGS, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = _run(
        [torchrun, "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "vitcompress.cli", *ARGS,
         "--out", str(tmp_path / "two")]
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("outputs in") == 1  # only rank 0 prints its summary line
    assert not (tmp_path / "two.partial").exists()
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    strip = [[{k: v for k, v in h.items() if k != "seconds"} for h in m["evolq"]["history"]] for m in (a, b)]
    assert strip[0] == strip[1]
    wa, wb = (load_file(tmp_path / d / "model" / "model.safetensors") for d in ("one", "two"))
    assert wa.keys() == wb.keys()
    assert all(bool((wa[k] == wb[k]).all()) for k in wa)  # tolerance 0: the same scales bit for bit
