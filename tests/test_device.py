"""Device plumbing, tested on the CPU: ``resolve_device``'s one-line errors, and "work happens on the model's device".

No GPU runs these tests, so a second device is simulated by a second *dtype*: the model is put in float64, the
data stays float32, and :func:`vitcompress.device.to_device` (the one function that moves data to the model's
device) is replaced by one that also casts floating tensors to float64. Every module gets a forward pre-hook that
fails on a floating input whose dtype is not its parameters'. So a stage that forgets to move a batch to the
model's device (a float32 batch reaches a float64 module), or builds a tensor where the default device/dtype puts
it instead of where the model is (``torch.zeros(shape)`` is float32), fails here as it would fail on a GPU. On a
CPU-only machine the real device check of the same hook cannot fail; the dtype stands in for it. What this cannot
catch: a tensor built with the model's dtype but not its device (``dtype=p.dtype`` without ``device=``);
``benchmarks/gpu_check.py`` runs the same paths on a real GPU.
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

import vitcompress.device as device_module
from tiny_models import tiny_swin, tiny_vit
from vitcompress.api import compress_
from vitcompress.config import Reconstruction, get_preset, resolve_recipe
from vitcompress.cost import cost
from vitcompress.device import describe, model_device, resolve_device, to_device
from vitcompress.errors import ConfigError
from vitcompress.eval.classification import evaluate
from vitcompress.inspection import inspect_model
from vitcompress.quantize import quantize_

pytestmark = pytest.mark.usefixtures("one_thread")
NO_CUDA = not torch.cuda.is_available()


# ---- resolve_device --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpu", "cuda0", "cuda:", "cuda:x", "tpu", "", "cpu:0"])
def test_resolve_device_refuses_unknown_names_in_one_line(name):
    with pytest.raises(ConfigError) as e:
        resolve_device(name)
    message = str(e.value)
    assert "\n" not in message and message.startswith("device:") and "auto|cpu|cuda|cuda:N" in message


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(" CPU ")
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if not NO_CUDA else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert describe("cpu") == {"device": "cpu"}


@pytest.mark.skipif(not NO_CUDA, reason="CUDA present: the error is for machines without it")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_without_cuda_is_one_line(name):
    with pytest.raises(ConfigError) as e:
        resolve_device(name)
    assert "\n" not in str(e.value) and "no CUDA device" in str(e.value) and "--device cpu" in str(e.value)


def test_to_device_keeps_structure_and_identity():
    x, y = torch.zeros(2, 3), torch.arange(2)
    assert to_device(x, "cpu") is x
    moved = to_device({"images": [x, (y,)], "name": "a"}, "cpu")
    assert moved["images"][0] is x and moved["images"][1][0] is y and moved["name"] == "a"


# ---- the simulated second device -------------------------------------------------------------------------------
class DeviceCheck:
    """Float64 stands for "the model's device" (module docstring): moves cast, modules check their inputs."""

    def __init__(self) -> None:
        self.moves = 0
        self.calls = 0

    def to_device(self, data, device):
        moved = ORIGINAL_TO_DEVICE(data, device)
        self.moves += 1
        return _cast(moved)

    def hook(self, name: str):
        def check(module: nn.Module, args: tuple) -> None:
            param = next(module.parameters(recurse=False), None)
            if param is None or not param.is_floating_point():
                return
            self.calls += 1
            for i, a in enumerate(args):
                if isinstance(a, torch.Tensor) and a.is_floating_point():
                    assert a.device == param.device and a.dtype == param.dtype, (
                        f"{name or '<model>'} ({type(module).__name__}) input {i}: {a.dtype} on {a.device}, "
                        f"its parameters {param.dtype} on {param.device}: data not moved to the model's device"
                    )

        return check


ORIGINAL_TO_DEVICE = device_module.to_device


def _cast(data):
    if isinstance(data, torch.Tensor):
        return data.double() if data.is_floating_point() else data
    if isinstance(data, dict):
        return type(data)({k: _cast(v) for k, v in data.items()})
    if isinstance(data, (list, tuple)):
        return type(data)(_cast(v) for v in data)
    return data


@contextlib.contextmanager
def on_simulated_device(model: nn.Module, monkeypatch) -> Iterator[DeviceCheck]:
    """``model`` in float64 with the input checks; ``to_device`` replaced wherever it was imported."""
    check = DeviceCheck()
    for module in list(sys.modules.values()):
        if module is device_module:  # its own recursion stays the original's
            continue
        if module is not None and getattr(module, "to_device", None) is ORIGINAL_TO_DEVICE:
            monkeypatch.setattr(module, "to_device", check.to_device)
    model.double()
    handles = [m.register_forward_pre_hook(check.hook(n)) for n, m in model.named_modules()]
    try:
        yield check
    finally:
        for h in handles:
            h.remove()


def images(n: int, chans: int = 3, size: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)  # float32, as every dataset of the package yields
    return TensorDataset(torch.randn(n, chans, size, size, generator=g), torch.arange(n) % 10)


def test_the_simulation_catches_a_batch_that_was_not_moved(monkeypatch):
    model = tiny_vit()
    with on_simulated_device(model, monkeypatch), pytest.raises(AssertionError, match="not moved"):
        model(torch.randn(2, 3, 32, 32))  # a float32 batch: what a stage that forgot to_device would pass


@pytest.mark.parametrize("recipe", ["w8a8", "fqvit-w4a8", "repq-w4a4"])
def test_ptq_calibration_and_evaluation_run_on_the_models_device(recipe, monkeypatch):
    model = tiny_vit()
    with on_simulated_device(model, monkeypatch) as check:
        quantize_(model, resolve_recipe(recipe), images(16), batch_size=8)
        m = evaluate(model, images(8, seed=1), batch_size=4)
    assert m.images == 8 and check.moves >= 4 and check.calls > 0
    assert all(p.dtype == torch.float64 for p in model.parameters())  # nothing moved the model back


def test_swin_ptq_cost_and_inspect_on_the_models_device(monkeypatch):
    model = tiny_swin()
    with on_simulated_device(model, monkeypatch) as check:
        found = inspect_model(model, resolve_recipe("w8a8"), input_size=32)
        quantize_(model, resolve_recipe("w8a8"), images(8, chans=1), batch_size=4)
        report = cost(model)
    assert found.points and report.macs > 0 and check.calls > 0


def test_training_runs_on_the_models_device(monkeypatch):
    from vitcompress.train.trainer import TrainConfig, train
    from vitcompress.train.zoo import smoothed_cross_entropy

    model = tiny_vit()
    with on_simulated_device(model, monkeypatch) as check:
        info = train(model, smoothed_cross_entropy(0.1), images(16), TrainConfig(steps=2, batch_size=8, log_every=1))
    assert info["steps"] == 2 and check.moves == 2 and torch.isfinite(torch.tensor(info["final"]["loss"]))


def test_block_reconstruction_runs_on_the_models_device(monkeypatch):
    model = tiny_vit()
    recipe = replace(get_preset("w4a4"), reconstruction=Reconstruction(iters=2, batch_size=8))
    with on_simulated_device(model, monkeypatch) as check:
        quantize_(model, recipe, images(16))
    assert check.calls > 0 and all(p.dtype == torch.float64 for p in model.parameters())


def test_gpusq_runs_on_the_models_device(monkeypatch):
    from vitcompress.methods.gpusq import gpusq_preset
    from vitcompress.train.trainer import TrainConfig

    steps = TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1)
    config = replace(gpusq_preset("gpusq-int8"), prune=steps, qat=replace(steps, lr=1e-4), factor_images=16)
    model = tiny_vit()
    with on_simulated_device(model, monkeypatch) as check:
        result = compress_(model, config, images(16), train_data=images(16))
    assert result.metrics["qat"]["steps"] == 2 and check.moves >= 4  # 2 + 2 training batches, the factor batches


@pytest.mark.slow
def test_evolq_runs_on_the_models_device(monkeypatch):
    from vitcompress.methods.evolq import EvolQConfig

    config = EvolQConfig(
        recipe=get_preset("w4a8"), passes=1, cycles=1, population=4, tournament=3, calib_size=16, batch_size=8
    )
    model = tiny_vit()
    with on_simulated_device(model, monkeypatch) as check:
        compress_(model, config, images(16))
    assert check.calls > 0


@pytest.mark.slow
def test_flbq_runs_on_the_models_device(monkeypatch):
    from vitcompress.methods.flbq import FLBQConfig

    model = tiny_vit()
    with on_simulated_device(model, monkeypatch) as check:
        compress_(model, FLBQConfig(budget=3, bits=(2, 3, 4, 8), n_images=8), images(16))
    assert check.calls > 0


@pytest.mark.slow
def test_mixaq_runs_on_the_models_device(monkeypatch):
    from vitcompress.methods.mixaq import MixAQConfig
    from vitcompress.methods.mixaq.config import MixAQSearchConfig

    model, data = tiny_swin(), images(96, chans=1)
    config = MixAQConfig(eval_images=32, search=MixAQSearchConfig(population=2, generations=0))
    with on_simulated_device(model, monkeypatch) as check:
        compress_(model, config, Subset(data, range(16)))  # candidates scored on 32 held-out images of `data`
    assert check.calls > 0


# ---- modules built on the way: the meta device as the second device -------------------------------------------
# ``prepare`` runs one shape-only forward, which the meta device can run: a model on "meta" whose quantizers come
# out anywhere else is a model whose quantizers would stay on the CPU beside a CUDA model.
def _off_device(model: nn.Module, device: str = "meta") -> list[str]:
    tensors = [*model.named_parameters(), *model.named_buffers()]
    return [name for name, t in tensors if t.device.type != device]


@pytest.mark.parametrize("recipe", ["w8a8", "fqvit", "repq-w4a4"])
@pytest.mark.parametrize("make, chans", [(tiny_vit, 3), (tiny_swin, 1)], ids=["vit", "swin"])
def test_prepare_builds_the_quantizers_on_the_models_device(make, chans, recipe):
    from vitcompress.nn.convert import prepare, quantization_points

    model = make().to("meta")
    prepare(model, resolve_recipe(recipe), torch.zeros(1, chans, 32, 32, device="meta"))
    assert len(list(quantization_points(model))) > 10 and _off_device(model) == []


def test_mixaq_low_branch_quantizers_follow_the_high_branch():
    from vitcompress.methods.mixaq.two_branch import low_bit_quantizer
    from vitcompress.quant import make_quantizer

    high = make_quantizer(get_preset("w8a8").act, "x", -1, 16).to("meta")
    low = low_bit_quantizer(high, 4, "x.low")
    assert low.spec.bits == 4 and _off_device(low) == []


def test_the_export_works_from_a_cpu_copy(monkeypatch, tmp_path):
    import vitcompress.export.onnx_export as onnx_export

    model = tiny_vit()
    assert onnx_export.cpu_copy(model) is model  # on the CPU: no copy
    monkeypatch.setattr(onnx_export, "model_device", lambda m: torch.device("cuda"))  # as if it sat on a GPU
    host = onnx_export.cpu_copy(model)
    pairs = list(zip(model.parameters(), host.parameters(), strict=True))
    assert host is not model and all(torch.equal(a, b) and a is not b for a, b in pairs)  # the model itself stays
    report = onnx_export.export_onnx(model, tmp_path / "m.onnx", precision="fp32")
    assert report.to_dict()["model_device"] == "cuda" and report.to_dict()["traced_on"] == "cpu"
    assert model_device(nn.Identity()) == torch.device("cpu")


def test_bench_moves_the_timing_batch_once_to_the_models_device(monkeypatch):
    import vitcompress.export.bench as bench

    moved = []
    monkeypatch.setattr(bench, "to_device", lambda x, d: moved.append(d) or x)
    engine, x = bench.TorchEngine(tiny_vit()), torch.randn(2, 3, 32, 32)
    for _ in range(3):
        engine(x)  # the timed calls: the batch is moved before the first, not inside each
    assert moved == [torch.device("cpu")] and engine.host(x).shape == (2, 10) and len(moved) == 1


def test_job_records_the_device_and_refuses_cuda_without_it(tmp_path):
    from vitcompress.jobs import JobConfig, run_job
    from vitcompress.models.source import ModelSource

    result = run_job(
        JobConfig(ModelSource("vit-fmnist"), calib_size=16, limit=16, device="cpu"), resolve_recipe("w8a8")
    )
    assert result.metrics["device"] == "cpu"
    with pytest.raises(ConfigError, match="device: 'gpu' is not one of"):
        JobConfig(ModelSource("vit-fmnist"), device="gpu")
    if NO_CUDA:
        with pytest.raises(ConfigError, match="no CUDA device"):
            JobConfig(ModelSource("vit-fmnist"), device="cuda")


def test_model_source_loads_onto_the_device():
    from vitcompress.models.source import ModelSource

    model = ModelSource("vit-fmnist").load("cpu")
    assert model_device(model) == torch.device("cpu") and not model.training
    with pytest.raises(ConfigError, match="not one of"):
        ModelSource("vit-fmnist").load("gpu")


def test_a_float64_copy_computes_what_the_float32_model_does():
    """The simulation's premise: float64 changes the numbers by rounding only (so a pass here is a real pass)."""
    model = tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref, got = model(x), copy.deepcopy(model).double()(x.double())
    assert torch.allclose(ref.double(), got, atol=1e-4)  # float32 rounding over two blocks


# ---- benchmarks/gpu_check.py: its pieces here, the whole script with --device cpu --quick (slow) ---------------
def _gpu_check():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_gpu_check_pieces():
    check = _gpu_check()
    w = check.two_four(torch.randn(8, 16))
    assert ((w.view(8, 4, 4) != 0).sum(-1) <= 2).all()  # at most 2 of every 4 kept
    assert check.sparse24(torch.device("cpu")) == {"skipped": "2:4 semi-structured kernels need CUDA (sm80+)"}
    result = {"a": {"passed": False}, "b": {"x": {"error": "E: boom"}, "y": {"seconds": 1.0}}}
    assert check.failures(result) == ["a: outside the tolerance", "b/x: E: boom"]
    lines = check.command_lines(Path("/w"), check.Sizes.of(True))
    assert {a[0] for a in lines.values()} >= {"eval", "cost", "inspect", "export", "bench", "demo", "compress"}
    assert {a[1] for a in lines.values() if a[0] == "compress"} == {"ptq", "evolq", "flbq", "gpusq", "mixaq"}


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = _gpu_check().main(["--device", "cpu", "--quick", "--parts", "commands", "agreement", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0 and report["failures"] == [] and report["device"] == "cpu"
    assert all(r["rc"] == 0 for r in report["commands"].values())
    assert all(r["passed"] and r["top1_diff_pt"] == 0.0 for r in report["agreement"].values())  # CPU vs CPU: equal
