"""``evaluate``: accuracies, loss and the limit on a fixed toy classifier; input-shape errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from vitcompress.errors import ConfigError, DataError
from vitcompress.eval import evaluate
from vitcompress.models.zoo import build_zoo_model


class FixedLogits(nn.Module):
    """Logits read from the image: ``x[:, :10]`` (images are rows of 10 logits)."""

    def forward(self, x):
        return x[:, :10]


def _data():
    logits = torch.full((5, 10), -1.0)
    ranked = [(0, 1), (1, 0), (2, 3), (3, 9), (4, 4)]  # (label, rank of the label's logit)
    for i, (label, rank) in enumerate(ranked):
        order = [c for c in range(10) if c != label]
        logits[i, order[:rank]] = torch.arange(rank, 0, -1, dtype=torch.float) + 10  # `rank` classes above it
        logits[i, label] = 5.0
    return TensorDataset(logits, torch.tensor([label for label, _ in ranked]))


def test_top1_top5_loss_and_limit():
    data = _data()
    m = evaluate(FixedLogits(), data, batch_size=2)
    # label ranks 1, 0, 3, 9, 4: top-1 holds 1 of 5, top-5 holds 4 of 5 (rank 9 is outside)
    assert (m.top1, m.top5, m.images) == (20.0, 80.0, 5)
    x, y = data.tensors
    assert m.loss == pytest.approx(F.cross_entropy(x, y).item(), rel=1e-6)  # float32 sums: 1e-6
    first2 = evaluate(FixedLogits(), data, batch_size=4, limit=2)
    assert (first2.images, first2.top1) == (2, 50.0)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]  # an iterable of batches, cut at the limit inside a batch
    assert evaluate(FixedLogits(), batches, limit=4).images == 4


def test_empty_data_and_wrong_input_shape_are_errors():
    with pytest.raises(DataError, match="empty"):
        evaluate(FixedLogits(), [])
    model = build_zoo_model("vit-fmnist")
    data = [(torch.zeros(2, 3, 28, 28), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(DataError, match=r"expected \(N, 1, 28, 28\), got \(2, 3, 28, 28\)"):
        evaluate(model, data)


@pytest.mark.parametrize("limit", [0, -5, 2.5])
def test_limit_must_be_positive_and_is_named(limit):
    with pytest.raises(ConfigError, match=rf"^limit must be an integer >= 1, got {limit}$"):
        evaluate(FixedLogits(), _data(), limit=limit)


def test_batch_size_must_be_positive():
    with pytest.raises(ConfigError, match=r"^batch_size must be an integer >= 1, got 0$"):
        evaluate(FixedLogits(), _data(), batch_size=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_pixels_are_an_error_naming_the_batch(bad):
    x, y = _data().tensors
    x = x.clone()
    x[3, 2] = bad
    with pytest.raises(
        DataError, match=r"^evaluation batch 1 \(images 2\.\.3\) contains NaN or Inf values in 1 image$"
    ):
        evaluate(FixedLogits(), TensorDataset(x, y), batch_size=2)


def test_labels_outside_the_model_classes_are_an_error_naming_the_batch():
    x, y = _data().tensors
    y = y.clone()
    y[4] = 12
    with pytest.raises(
        DataError, match=r"^evaluation batch 2 \(images 4\.\.4\): label 12 is outside the class range 0\.\.9"
    ):
        evaluate(FixedLogits(), TensorDataset(x, y), batch_size=2)
    y[4] = -1
    with pytest.raises(DataError, match=r"label -1 is outside"):
        evaluate(FixedLogits(), TensorDataset(x, y), batch_size=2)


def test_non_finite_model_output_is_an_error():
    model = build_zoo_model("vit-fmnist")
    with torch.no_grad():
        model.head.weight[3, 0] = float("nan")
    data = [(torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(DataError, match=r"model's output on evaluation batch 0 \(images 0\.\.1\) holds NaN or Inf"):
        evaluate(model, data)
