"""The generic trainer: schedule, exact resume (drop-path included), SIGTERM checkpoint, 2-process DDP = 1 process."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tiny_models import tiny_vit
from vitcompress.errors import ConfigError, DataError, StateError
from vitcompress.sparsity import check_sparsity, mask_gradients_, sparsify_
from vitcompress.train.schedule import warmup_cosine
from vitcompress.train.trainer import TrainConfig, step_indices, train

pytestmark = pytest.mark.usefixtures("one_thread")


def data(n=48):
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 10)


def ce(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return loss, {"loss": loss.item()}


def test_schedule_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10, 1.0, 0.0) == 0.1
    assert warmup_cosine(9, 100, 10, 1.0, 0.0) == 1.0
    assert abs(warmup_cosine(55, 100, 10, 1.0, 0.0) - 0.5) < 1e-12
    assert warmup_cosine(100, 100, 10, 1.0, 0.1) == 0.1


def test_step_indices_cover_each_epoch_once():
    seen = torch.cat([step_indices(s, 48, 16, 0) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(48))
    assert not torch.equal(step_indices(3, 48, 16, 0), step_indices(0, 48, 16, 0))  # a new epoch, a new order
    with pytest.raises(ConfigError, match="exceeds the dataset size"):
        step_indices(0, 8, 16, 0)


def test_resume_is_bit_identical_with_drop_path(tmp_path):
    cfg = TrainConfig(steps=6, batch_size=16, lr=1e-3, warmup_steps=2, checkpoint_every=3)
    straight = tiny_vit(drop_path=0.2)
    out = train(straight, ce, data(), cfg)
    assert out["steps"] == 6 and len(out["history"]) == 1 and "loss" in out["final"]
    first = tiny_vit(drop_path=0.2)
    train(first, ce, data(), TrainConfig(**{**cfg.__dict__, "steps": 6}), state_dir=tmp_path)
    # a fresh process would rebuild the model: load the step-3 checkpoint written on the way
    state = torch.load(tmp_path / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6
    partial = tiny_vit(drop_path=0.2)
    cut = tmp_path / "cut"

    def stop_after_3(model, x, y):
        loss, logs = ce(model, x, y)
        if stop_after_3.calls == 2:  # the third step's loss: SIGTERM arrives mid-step
            os.kill(os.getpid(), signal.SIGTERM)
        stop_after_3.calls += 1
        return loss, logs

    stop_after_3.calls = 0
    res = train(partial, stop_after_3, data(), cfg, state_dir=cut)
    assert res["interrupted"] and res["steps"] == 3
    resumed = tiny_vit(drop_path=0.2)
    res = train(resumed, ce, data(), cfg, state_dir=cut, resume=True)
    assert res["steps"] == 6 and not res["interrupted"]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(straight.state_dict().values(), first.state_dict().values()):
        assert torch.equal(a, b)


def test_sparse_training_keeps_the_pattern():
    model = tiny_vit()
    sparsify_(model, "2:4")
    train(model, ce, data(), TrainConfig(steps=3, batch_size=16, lr=1e-2), after_backward=mask_gradients_)
    assert all(check_sparsity(model).values())


WORKER = textwrap.dedent("""
    import sys, torch, timm
    import torch.nn.functional as F
    from torch.utils.data import TensorDataset
    from vitcompress.sparsity import mask_gradients_, sparsify_
    from vitcompress.train.trainer import TrainConfig, train, init_distributed
    torch.set_num_threads(1)
    rank, world = init_distributed()
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=10)
    sparsify_(model, "2:4")
    g = torch.Generator().manual_seed(1)
    ds = TensorDataset(torch.randn(48, 3, 32, 32, generator=g), torch.arange(48) % 10)
    def ce(m, x, y):
        loss = F.cross_entropy(m(x), y)
        return loss, {"loss": loss.item()}
    out = train(model, ce, ds, TrainConfig(steps=4, batch_size=16, lr=1e-3, log_every=2),
                after_backward=mask_gradients_)
    if rank == 0:
        torch.save({"state": model.state_dict(), "history": out["history"], "world": world}, sys.argv[1])
""")


@pytest.mark.slow  # ~20 s: two torchrun workers start, import torch and timm
@pytest.mark.timeout(240)
def test_ddp_two_processes_match_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    subprocess.run([sys.executable, str(script), str(single)], check=True, env=env, timeout=200)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run([*torchrun, str(script), str(double)], env=env, timeout=200, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = torch.load(single, weights_only=True), torch.load(double, weights_only=True)
    assert (a["world"], b["world"]) == (1, 2)
    # same global batch of 16 (2 x 8 under DDP), 4 AdamW steps: only the float summation order differs,
    # so parameters agree to 1e-5 absolute (they move by ~4e-3 in these steps)
    for key, value in a["state"].items():
        torch.testing.assert_close(b["state"][key], value, rtol=0, atol=1e-5, msg=key)
    for ha, hb in zip(a["history"], b["history"]):
        assert abs(ha["loss"] - hb["loss"]) < 1e-5


# ---- one line for every failure; non-finite values caught --------------------------------------------------
@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x80\x02corrupt", r"cannot read trainer state .*trainer_state\.pt: .*; remove it to start over$"),
        (b"", r"cannot read trainer state .*trainer_state\.pt: "),
        ("list", r"trainer_state\.pt is not a trainer state \(keys \['history', 'model'"),
        ("other model", r"trainer state .*trainer_state\.pt does not fit this run \(Error\(s\) in loading state_dict"),
        ("pickled object", r"cannot read trainer state .*: it holds Python objects a weights-only load refuses"),
    ],
)
def test_corrupt_or_foreign_trainer_state_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "trainer_state.pt"
    if content == "list":
        torch.save([1, 2], path)
    elif content == "other model":
        torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}, "step": 1, "seconds": 0.0, "history": []}, path)
    elif content == "pickled object":
        torch.save({"model": ConfigError("x")}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(StateError, match=message) as e:
        train(tiny_vit(), ce, data(), TrainConfig(steps=1, batch_size=16), state_dir=tmp_path, resume=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, r"^steps must be an integer >= 1, got 0$"),
        ({"batch_size": -4}, r"^batch_size must be an integer >= 1, got -4$"),
        ({"lr": float("nan")}, r"^lr must be a finite number > 0, got nan$"),
        ({"lr": 0.0}, r"^lr must be a finite number > 0"),
        ({"grad_clip": float("inf")}, r"^grad_clip must be a finite number >= 0"),
        ({"min_lr": -1e-6}, r"^min_lr must be a finite number >= 0"),
        ({"warmup_steps": -1}, r"^warmup_steps must be an integer >= 0"),
        ({"checkpoint_every": 1.5}, r"^checkpoint_every must be an integer >= 0"),
    ],
)
def test_train_config_numbers_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"steps": 1, **kwargs})


def test_non_finite_batch_labels_out_of_range_and_nan_loss_stop_training(tmp_path):
    x, y = data().tensors
    bad = x.clone()
    bad[5, 0, 0, 0] = float("nan")
    cfg = TrainConfig(steps=3, batch_size=48)
    with pytest.raises(DataError, match=r"^train: training batch of step 0: dataset item 5 holds NaN or Inf pixel"):
        train(tiny_vit(), ce, TensorDataset(bad, y), cfg)
    labels = y.clone()
    labels[7] = 10
    with pytest.raises(
        DataError, match=r"^train: training batch of step 0: label 10 is outside the class range 0\.\.9"
    ):
        train(tiny_vit(), ce, TensorDataset(x, labels), cfg)
    model = tiny_vit()
    with torch.no_grad():
        model.head.bias[2] = float("inf")
    with pytest.raises(DataError, match=r"^train: the loss is NaN or Inf at step 0: the training diverged"):
        train(model, ce, data(), cfg, state_dir=tmp_path)
    assert not (tmp_path / "trainer_state.pt").exists()  # nothing diverged was saved
