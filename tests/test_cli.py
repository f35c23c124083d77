import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vitcompress.cli import build_parser, main

METHODS = ["ptq", "evolq", "flbq", "gpusq", "mixaq"]
COMMANDS = [
    ["demo"],
    ["eval"],
    ["zoo"],
    ["zoo", "list"],
    ["zoo", "train"],
    ["cost"],
    ["inspect"],
    ["scenes"],
    ["scenes", "build"],
    ["compress"],
    *(["compress", m] for m in METHODS),
    ["allocate"],
    ["mixaq"],
    ["mixaq", "sample"],
    ["mixaq", "eqbits"],
    ["export"],
    ["bench"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_help_on_every_command(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    assert "usage: vitcompress" in capsys.readouterr().out


def test_every_subcommand_is_covered_by_the_help_test():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {a[0] for a in COMMANDS}


def test_unknown_model_is_a_one_line_error(capsys):
    assert main(["eval", "--model", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitcompress: error: unknown model 'nope'") and "\n" not in err


def test_every_method_is_a_compress_subcommand():
    compress = next(a for a in build_parser()._actions if a.dest == "command").choices["compress"]
    methods = next(a for a in compress._actions if a.dest == "method")
    assert list(methods.choices) == METHODS


def test_bad_recipe_is_a_one_line_error(capsys, tmp_path):
    assert main(["compress", "ptq", "--model", "vit-fmnist", "--recipe", "w5a5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "recipe must be one of" in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing written before the inputs are checked


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_work_before_and_after_the_command(where, capsys):
    argv = ["zoo", "list", "--json"]
    argv = ["--threads", "0", *argv] if where == "before" else [*argv, "--threads", "0"]
    assert main(argv) == 2
    assert "threads must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["cost"], ["export"], ["bench"], *(["compress", m] for m in METHODS)])
def test_model_option_is_the_same_on_every_command(command):
    parser = build_parser()
    sub = parser
    for word in command:
        sub = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    options = {o for a in sub._actions for o in a.option_strings}
    assert {
        "--model",
        "--checkpoint",
        "--num-classes",
        "--in-chans",
        "--img-size",
        "--threads",
        "--data-root",
    } <= options
    if command[0] == "compress":
        assert {"--out", "--seed", "--calib-size", "--limit", "--resume"} <= options


def test_zoo_list_json(capsys):
    assert main(["zoo", "list", "--json"]) == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == ["vit-fmnist", "swin-fmnist", "swin-det-scenes", "vit-det-scenes"]  # classifiers, detectors


def test_import_is_quick_and_lazy():
    code = (
        "import time, sys; t = time.perf_counter(); import vitcompress; "
        "print(time.perf_counter() - t, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"  # no torch, no data at import
    assert float(out[0]) < 1.0  # seconds; generous: it imports nothing heavy


def test_every_lazy_export_resolves():
    import vitcompress

    for name in vitcompress.__all__:
        assert getattr(vitcompress, name) is not None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "--model", "vit-fmnist", "--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
        (["eval", "--model", "vit-fmnist", "--limit", "-5"], "limit must be an integer >= 1, got -5"),
        (["demo", "--limit", "0"], "limit must be an integer >= 1, got 0"),
        (["compress", "ptq", "--model", "vit-fmnist", "--recipe", "w8a8", "--out", "x", "--limit", "0"],
         "limit must be an integer >= 1, got 0"),
        (["--threads", "-1", "zoo", "list"], "threads must be an integer >= 1, got -1"),
    ],
)  # fmt: skip
def test_numeric_options_are_checked_before_any_work(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_scenes_build_writes_coco_json_once(tmp_path, capsys):
    argv = ["scenes", "build", "--image-size", "64", "--train-size", "3", "--val-size", "2", "--max-item-size", "40",
            "--cache-dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    folder = capsys.readouterr().out.strip()
    val = json.loads((Path(folder) / "annotations" / "instances_val.json").read_text())
    assert len(val["images"]) == 2 and val["annotations"] and {c["id"] for c in val["categories"]} == set(range(1, 11))
    assert main(argv) == 0 and capsys.readouterr().out.strip() == folder  # built once, then reused
    with pytest.raises(SystemExit) as e:  # argparse refuses a background outside the choices
        main([*argv[:-2], "--background", "stripes", "--cache-dir", str(tmp_path)])
    assert e.value.code == 2 and "stripes" in capsys.readouterr().err


def test_cost_and_inspect_of_a_model_without_patch_embed_built_at_another_size(capsys):
    """LeViT built at 64 px: timm's pretrained_cfg would say 224; the size the model is built at is used."""
    argv = ["--model", "timm:levit_128s", "--img-size", "64", "--num-classes", "10", "--recipe", "w8a8", "--json"]
    assert main(["cost", *argv]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_shape"] == [3, 64, 64] and report["macs"] > 0
    assert main(["inspect", *argv]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["macs"] == report["macs"] and found["attention_modules"] == found["quantized_attention"] > 0
    assert found["float_modules"] == [] and found["error"] is None


# ---- --device on every command (#15) ------------------------------------------------------------------------------
# each command's argv, the model and data options it needs; --device goes before or after the command name
DEVICE_COMMANDS = {
    "eval": ["eval", "--model", "vit-fmnist", "--limit", "8"],
    "cost": ["cost", "--model", "vit-fmnist", "--recipe", "w8a8"],
    "inspect": ["inspect", "--model", "vit-fmnist"],
    "export": ["export", "--model", "vit-fmnist", "--out", "OUT/m.onnx"],
    "bench": ["bench", "--model", "vit-fmnist", "--runtime", "ort"],
    "demo": ["demo", "--presets", "w8a8"],
    "zoo train": ["zoo", "train", "vit-fmnist", "--state-dir", "OUT/zoo", "--out-dir", "OUT/zoo"],
    **{f"compress {m}": ["compress", m, "--model", "vit-fmnist", "--out", "OUT/job"] for m in METHODS},
}
DEVICE_COMMANDS["compress ptq"] += ["--recipe", "w8a8"]
DEVICE_COMMANDS["compress evolq"] += ["--recipe", "w4a8", "--calib-size", "16"]
DEVICE_COMMANDS["compress flbq"] += ["--budget", "4"]


class _Reached(Exception):
    """Raised by a spy where the command would start its work."""


def _spy_work(monkeypatch, seen: list) -> None:
    """Every entry into work (a model load, a job, a training) records the device it was given and stops."""
    import vitcompress.jobs as jobs
    import vitcompress.train.zoo as zoo
    from vitcompress.models.source import ModelSource

    def load(self, device=None):
        seen.append(("load", device))
        raise _Reached

    def train(name, *a, device=None, **k):
        seen.append(("train", device))
        raise _Reached

    def run_job(job, config, baseline=None):
        seen.append(("job", job.device))
        raise _Reached

    monkeypatch.setattr(ModelSource, "load", load)
    monkeypatch.setattr(zoo, "train_zoo_model", train)
    monkeypatch.setattr(jobs, "run_job", run_job)


def _argv(name: str, tmp_path: Path) -> list[str]:
    return [a.replace("OUT", str(tmp_path)) for a in DEVICE_COMMANDS[name]]


@pytest.mark.parametrize("name", list(DEVICE_COMMANDS))
def test_device_cuda_without_cuda_fails_in_one_line_before_any_work(name, tmp_path, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    seen: list = []
    _spy_work(monkeypatch, seen)
    for argv in (["--device", "cuda", *_argv(name, tmp_path)], [*_argv(name, tmp_path), "--device", "cuda:1"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("vitcompress: error: device: cuda") and "no CUDA" in err
    assert seen == []  # refused before any model was loaded or job started
    assert main([*_argv(name, tmp_path), "--device", "gpu"]) == 2
    assert "device: 'gpu' is not one of auto|cpu|cuda|cuda:N" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(DEVICE_COMMANDS))
def test_device_reaches_the_model_load_of_every_command(name, tmp_path, monkeypatch):
    seen: list = []
    _spy_work(monkeypatch, seen)
    with pytest.raises(_Reached):
        main([*_argv(name, tmp_path), "--device", "cpu"])
    assert seen and seen[0][1] == "cpu", seen
    seen.clear()
    with pytest.raises(_Reached):
        main(_argv(name, tmp_path))
    assert seen[0][1] == "auto"  # the default: CUDA when present


def test_device_cpu_runs_cost_and_inspect(tmp_path, capsys):
    assert main([*_argv("cost", tmp_path), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 0
    assert main([*_argv("inspect", tmp_path), "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["points"]


@pytest.mark.slow
def test_device_cpu_runs_eval_and_compress_and_records_it(tmp_path, capsys):
    assert main(["--device", "cpu", "--no-progress", *_argv("eval", tmp_path)]) == 0
    assert "8 images" in capsys.readouterr().out
    out = tmp_path / "job"
    argv = ["compress", "ptq", "--model", "vit-fmnist", "--out", str(out), "--calib-size", "16", "--limit", "16"]
    assert main([*argv, "--device", "cpu", "--recipe", "w8a8", "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["device"] == "cpu"
