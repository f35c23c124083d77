"""A user's own model and images, end to end through the command line (issue: bring your own model and images)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import Subset

from vitcompress.cli import main
from vitcompress.data import DEFAULT_FMNIST_ROOT, load_dataset
from vitcompress.data.datasets import FashionMNIST
from vitcompress.eval import evaluate
from vitcompress.models import input_spec_of, load_model

needs_fmnist = pytest.mark.skipif(
    not (DEFAULT_FMNIST_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="needs dataset-fashion-mnist"
)
VIT_FMNIST_ARGS = ["img_size=28", "patch_size=4", "in_chans=1", "num_classes=10", "embed_dim=96", "depth=6",
                   "num_heads=3", "mlp_ratio=4.0"]  # fmt: skip


def _write_fmnist_folder(root, split, n, size):
    """The first ``n`` images of a Fashion-MNIST split as RGB PNGs of ``size`` px, one folder per class."""
    data = FashionMNIST(DEFAULT_FMNIST_ROOT, split, input_spec_of(load_model("vit-fmnist")))
    for i in range(n):
        label = int(data.targets[i])
        img = Image.fromarray(data.images[i].numpy()).convert("RGB").resize((size, size), Image.NEAREST)
        (root / f"{label:02d}").mkdir(parents=True, exist_ok=True)
        img.save(root / f"{label:02d}" / f"{i:05d}.png")


@needs_fmnist
def test_a_plain_timm_checkpoint_and_a_png_folder_reproduce_the_zoo_accuracy(tmp_path, capsys):
    n = 2000
    _write_fmnist_folder(tmp_path / "images" / "train", "train", 64, 56)
    _write_fmnist_folder(tmp_path / "images" / "val", "test", n, 56)
    zoo = load_model("vit-fmnist")
    save_file(zoo.state_dict(), tmp_path / "vit.safetensors")  # a plain timm state dict, nothing of ours
    reference = evaluate(zoo, Subset(load_dataset(input_spec_of(zoo), "test"), range(n))).top1
    model = ["--model", "timm:vit_tiny_patch16_224", "--checkpoint", str(tmp_path / "vit.safetensors")]
    data = ["--data", f"imagefolder:{tmp_path / 'images'}", "--mean", "0.2860", "--std", "0.3530"]
    argv = ["eval", *model, "--model-args", *VIT_FMNIST_ARGS, *data, "--crop-pct", "1", "--interpolation", "box",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == n
    # the PNGs are 2x nearest-neighbour enlargements, so a box filter gives back the 28-px pixels exactly; only the
    # normalisation's float rounding differs from the zoo path (torchvision's Normalize vs ours), which could flip
    # an image sitting exactly on a decision boundary: 0.05 pt is one image in 2,000. (With --interpolation bilinear
    # the antialiased resize blurs: 89.30 vs 90.31 % on all 10,000 test images.)
    assert got["top1"] == pytest.approx(reference, abs=0.05)


def _random_folder(root, classes=2, per_class=6, size=(256, 240)):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"class{c}" / f"{i}.jpg")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_a_224px_model_runs_compress_export_bench_from_an_image_folder(arch, tmp_path, capsys):
    torch.manual_seed(0)
    _random_folder(tmp_path / "images")
    model = ["--model", f"timm:{arch}", "--num-classes", "2"]
    data = ["--data", f"imagefolder:{tmp_path / 'images'}", "--workers", "0"]
    out = tmp_path / "run"
    assert main(["compress", "ptq", *model, *data, "--recipe", "w8a8", "--calib-size", "8", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_images"] == 12 and metrics["preprocess"]["input_size"] == [3, 224, 224]
    capsys.readouterr()
    assert main(["export", "--model", str(out), *data, "--out", str(tmp_path / "m.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["float_points"] == 0 and (tmp_path / "m.onnx").stat().st_size
    argv = ["bench", "--model", str(out), *data, "--batch", "1", "--warmup", "1", "--repeats", "2", "--rounds", "1",
            "--json"]  # fmt: skip
    assert main(argv) == 0
    bench = json.loads(capsys.readouterr().out)
    assert {t["engine"] for t in bench["timings"]} >= {"ort-fp32", "ort-int8"}
