"""What a job evaluates a detector on and with (``vitcompress.eval.task``), and scenes as calibration data."""

from __future__ import annotations

import pytest
import torch

from tiny_detection import tiny_detector, tiny_scenes
from vitcompress.data.calib import first_images, iter_images
from vitcompress.data.source import DataSource
from vitcompress.errors import ConfigError, DataError
from vitcompress.eval.classification import Metrics
from vitcompress.eval.detection import DetectionMetrics
from vitcompress.eval.task import accuracy_metrics, detection_splits, evaluate_model, headline

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return tiny_scenes(tmp_path_factory.mktemp("scenes"))


def test_scenes_are_calibration_data_in_batches_of_one_size(scenes):
    train, _ = scenes
    batches = list(iter_images(train, batch_size=3))
    assert [tuple(b.shape) for b in batches] == [(3, 1, 64, 64), (3, 1, 64, 64), (2, 1, 64, 64)]
    assert torch.equal(first_images(train, 1)[0], train[0][0])


def test_a_list_of_images_of_different_sizes_is_a_one_line_error():
    with pytest.raises(DataError, match="calibration batch 0 holds images of different sizes"):
        list(iter_images([([torch.rand(1, 8, 8), torch.rand(1, 8, 16)], None)]))


def test_evaluate_model_gives_coco_ap_for_a_detector(scenes, one_thread):
    _, val = scenes
    m = evaluate_model(tiny_detector("swin"), val, batch_size=256, limit=3)  # batch capped at 8
    assert isinstance(m, DetectionMetrics) and m.images == 3 and 0 <= m.bbox_map <= m.bbox_map50 <= 100


def test_accuracy_metrics_name_the_task_numbers():
    det = DetectionMetrics(20.0, 40.0, 15.0, 10.0, 25.0, None, images=5, images_per_s=1.0)
    q = DetectionMetrics(19.0, 39.0, 14.0, 9.0, 24.0, None, images=5, images_per_s=1.0)
    m = accuracy_metrics(det, q)
    assert m == {
        "fp_bbox_map": 20.0,
        "q_bbox_map": 19.0,
        "fp_bbox_map50": 40.0,
        "q_bbox_map50": 39.0,
        "fp_bbox_map75": 15.0,
        "q_bbox_map75": 14.0,
        "eval_images": 5,
    }
    assert headline(m) == ("box mAP", 20.0, 19.0)
    c = accuracy_metrics(Metrics(90.0, 99.0, 0.3, 10, 1.0), Metrics(89.0, 99.0, 0.4, 10, 1.0))
    assert list(c) == ["fp_top1", "q_top1", "fp_top5", "q_top5", "fp_loss", "q_loss", "eval_images"]
    assert headline(c) == ("top-1", 90.0, 89.0)


def test_detection_splits_refuse_other_data():
    model = tiny_detector("vit")
    with pytest.raises(ConfigError, match="embedded scenes"):
        detection_splits(model, DataSource(data="imagefolder:/nowhere"))
