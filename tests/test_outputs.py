"""Output folders are transactions: a killed or failed run leaves the old result or the new one, never a mix."""

import collections
import json
import os
import resource
import signal
import stat
import subprocess
import sys

import pytest
import torch

import vitcompress.jobs
import vitcompress.outputs
from vitcompress.cli import main
from vitcompress.config import get_preset
from vitcompress.data import DEFAULT_FMNIST_ROOT
from vitcompress.errors import CheckpointError, ConfigError
from vitcompress.jobs import JobConfig, run_job
from vitcompress.models.source import ModelSource
from vitcompress.quantize import restore

pytestmark = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist"
)
ARGS = ["compress", "ptq", "--model", "vit-fmnist", "--calib-size", "32", "--limit", "64", "--threads", "1"]


def _job(out, **kw):
    return JobConfig(ModelSource("vit-fmnist"), out=str(out), calib_size=32, limit=64, **kw)


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """A complete w8a8 result: the folder a later run must either keep or replace whole."""
    out = tmp_path_factory.mktemp("jobs") / "run"
    run_job(_job(out), get_preset("w8a8"))
    return out


def test_a_run_killed_while_writing_leaves_the_earlier_result(earlier, tmp_path, monkeypatch):
    out = tmp_path / "run"
    os.system(f"cp -r {earlier} {out}")
    before = _snapshot(out)

    def killed(*args, **kwargs):  # the process dies here: nothing after it runs, no clean-up either
        raise KeyboardInterrupt

    monkeypatch.setattr(vitcompress.outputs, "swap_into_place", killed)  # everything is written, not yet swapped
    with pytest.raises(KeyboardInterrupt):
        run_job(_job(out, overwrite=True), get_preset("w4a4"))
    assert _snapshot(out) == before  # the old result, bit for bit, and it still loads as itself
    assert json.loads((out / "model" / "recipe.json").read_text())["name"] == "w8a8"
    partial = tmp_path / "run.partial"
    assert json.loads((partial / "model" / "recipe.json").read_text())["name"] == "w4a4"
    with pytest.raises(ConfigError, match=r"an unfinished run is in .*run\.partial: --resume continues it"):
        run_job(_job(out), get_preset("w4a4"))
    monkeypatch.undo()
    run_job(_job(out, resume=True), get_preset("w4a4"))  # finishing it swaps the new result in whole
    assert not partial.exists() and json.loads((out / "metrics.json").read_text())["recipe"] == "w4a4"
    assert restore(out / "model").vitcompress_recipe.name == "w4a4"


def test_an_earlier_result_is_replaced_only_when_asked(earlier, tmp_path):
    with pytest.raises(ConfigError, match=r"out: .*run holds an earlier result: --overwrite replaces it"):
        run_job(_job(earlier), get_preset("w4a8"))
    with pytest.raises(ConfigError, match=r"resume: nothing to resume: neither .*nothing nor .*nothing\.partial"):
        run_job(_job(tmp_path / "nothing", resume=True), get_preset("w4a8"))
    assert not (tmp_path / "nothing").exists()


def test_a_folder_whose_parts_disagree_is_refused(earlier, tmp_path, capsys):
    out = tmp_path / "run"
    os.system(f"cp -r {earlier} {out}")
    recipe = out / "model" / "recipe.json"
    recipe.write_text(json.dumps(get_preset("w4a4").to_dict()))  # new recipe, old weights
    with pytest.raises(CheckpointError, match=r"model is inconsistent: recipe.json is not the file its manifest lists"):
        restore(out / "model")
    assert main(["eval", "--model", str(out), "--limit", "8"]) == 2
    assert "inconsistent" in capsys.readouterr().err
    (out / "model" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        restore(out / "model")


def test_outputs_have_the_usual_permissions(earlier):
    umask = os.umask(0)
    os.umask(umask)
    modes = collections.Counter(stat.S_IMODE(p.stat().st_mode) for p in earlier.rglob("*") if p.is_file())
    assert set(modes) == {0o666 & ~umask}, modes


def test_not_enough_free_space_fails_before_any_work(tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(vitcompress.outputs.shutil, "disk_usage", lambda p: usage(10**9, 10**9, 1 << 20))
    monkeypatch.setattr(vitcompress.jobs, "load_data", lambda *a, **k: pytest.fail("data loaded"))
    with pytest.raises(ConfigError, match=r"out: .* has 1 MiB free; this run needs about \d+ MiB"):
        run_job(_job(tmp_path / "run"), get_preset("w8a8"))


def test_a_full_disk_is_one_line_and_keeps_the_earlier_result(earlier, tmp_path):
    out = tmp_path / "run"
    os.system(f"cp -r {earlier} {out}")
    before = _snapshot(out)

    def limit_file_size():  # writes past 64 KiB fail with EFBIG, as on a full disk (SIGXFSZ ignored)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    cmd = [sys.executable, "-m", "vitcompress.cli", *ARGS, "--recipe", "w4a8", "--out", str(out), "--overwrite"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, preexec_fn=limit_file_size, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vitcompress: error: cannot write ") and "File too large" in last
    assert _snapshot(out) == before
    torch.testing.assert_close(restore(out / "model").blocks[0].attn.qkv.weight, restore(earlier / "model").blocks[
        0].attn.qkv.weight)  # fmt: skip
