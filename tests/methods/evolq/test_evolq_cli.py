"""``vitcompress compress evolq``: metrics history, resumable state, option errors (reference model, tiny search)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from vitcompress.cli import main
from vitcompress.data import DEFAULT_FMNIST_ROOT
from vitcompress.models.zoo import ZOO

ready = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() or not ZOO["vit-fmnist"].checkpoint.is_file(),
    reason="needs dataset-fashion-mnist and the shipped checkpoints",
)
ARGS = [
    "compress",
    "evolq",
    "--model",
    "vit-fmnist",
    "--recipe",
    "w4a8",
    "--calib-size",
    "32",
    "--limit",
    "100",
    "--threads",
    "1",
    "--passes",
    "2",
    "--cycles",
    "1",
    "--fitness",
    "infonce",
]


@ready
def test_compress_evolq_writes_history_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(ARGS + ["--out", str(out)]) == 0
    assert "(Evol-Q)" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    history = m["evolq"]["history"]
    assert m["method"] == "evolq" and m["recipe"] == "w4a8"
    assert [h["pass"] for h in history] == [0, 1, 2]
    assert all(h["top1"] is not None and h["fitness"] > 0 for h in history)
    assert history[0]["top1"] == m["ptq_top1"] and history[-1]["top1"] == m["q_top1"]  # eval: same 100 images
    assert history[2]["fitness"] <= history[1]["fitness"] <= history[0]["fitness"]
    assert m["evolq"]["config"]["passes"] == 2 and m["evolq"]["config"]["calib_size"] == 32
    assert m["evolq"]["evaluations"] == 2 * 6 * 1 and (out / "evolq_state.pt").is_file()
    assert (out / "evolq_passes.png").is_file() and "## Evol-Q" in (out / "report.md").read_text()
    scales = load_file(out / "model" / "model.safetensors")
    # the same command again would overwrite a run: an error, exit status 2
    assert main(ARGS + ["--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume of the finished run does no new work and writes the same scales
    assert main(ARGS + ["--out", str(out), "--resume"]) == 0
    again = load_file(out / "model" / "model.safetensors")
    assert all((again[k] == v).all() for k, v in scales.items() if k.endswith("weight_quantizer.scale"))
    assert json.loads((out / "metrics.json").read_text())["evolq"]["resumed"] is True


@ready
def test_evolq_options_are_checked(tmp_path, capsys):
    base = [
        "compress",
        "evolq",
        "--model",
        "vit-fmnist",
        "--out",
        str(tmp_path / "x"),
        "--calib-size",
        "64",
        "--limit",
        "10",
    ]
    assert main(base + ["--recipe", "w4a8", "--fitness", "l2"]) == 2
    assert "fitness must be one of ['infonce', 'mse', 'cosine', 'kl']" in capsys.readouterr().err
    assert main(base + ["--recipe", "w5a5"]) == 2
    assert "recipe must be one of" in capsys.readouterr().err
    assert main(base + ["--passes", "1"]) == 2  # a float model and no recipe
    assert "--recipe NAME|FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the old flag is gone
        main(base + ["--recipe", "w4a8", "--evolq"])


@ready
@pytest.mark.slow
def test_sigkilled_compress_resumes_to_the_scales_of_an_uninterrupted_run(tmp_path):
    """A real kill (SIGKILL, no clean-up) after the first saved block, then --resume, against one clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [
        "compress",
        "evolq",
        "--model",
        "vit-fmnist",
        "--recipe",
        "w4a8",
        "--calib-size",
        "64",
        "--limit",
        "100",
        "--threads",
        "1",
        "--passes",
        "3",
        "--cycles",
        "2",
    ]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert main(args + ["--out", str(clean)]) == 0
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitcompress.cli", *args, "--out", str(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = tmp_path / "killed.partial" / "evolq_state.pt"  # a run works in OUT.partial until it is complete
    deadline = time.monotonic() + 240
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not killed.exists()  # nothing half-written in OUT
    assert main(args + ["--out", str(killed)]) == 2  # an unfinished run waits: resume it or start over
    assert main(args + ["--out", str(killed), "--resume"]) == 0
    assert not (tmp_path / "killed.partial").exists()
    a, b = load_file(clean / "model" / "model.safetensors"), load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads((clean / "metrics.json").read_text())["evolq"]["history"]
    hb = json.loads((killed / "metrics.json").read_text())["evolq"]["history"]
    assert [h["fitness"] for h in ha] == [h["fitness"] for h in hb]


@ready
def test_docs_example_runs(tmp_path, monkeypatch, capsys, one_thread):
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[3] / "docs" / "evolq.md").read_text()
    monkeypatch.chdir(tmp_path)
    exec(compile(re.findall(r"```python\n(.*?)```", text, flags=re.S)[0], "docs/evolq.md", "exec"), {})
    assert (tmp_path / "out" / "evolq_state.pt").is_file()
    assert "'pass': 1" in capsys.readouterr().out
