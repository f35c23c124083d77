"""COCO evaluation (``vitcompress.eval.detection``) on hand-made cases with known AP."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from vitcompress.data.scenes import SceneConfig, SceneDataset, build_scenes, rle  # noqa: E402
from vitcompress.errors import ConfigError, DataError  # noqa: E402
from vitcompress.eval.detection import coco_metrics, detections_to_coco, evaluate_detection  # noqa: E402

TINY = SceneConfig(
    image_size=64, train_size=2, val_size=6, min_items=1, max_items=3, min_item_size=12, max_item_size=40
)


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory) -> SceneDataset:
    return SceneDataset(build_scenes(TINY, cache_dir=tmp_path_factory.mktemp("cache")), "val", masks=False)


CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _mask(h: int, w: int, x: int, y: int, bw: int, bh: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y : y + bh, x : x + bw] = True
    return m


def _gt(boxes: list[tuple[int, int, int, int, int]], size: int = 200) -> dict:
    """One image per call of ``size`` pixels; boxes as (x, y, w, h, category), masks their rectangles."""
    anns = []
    for x, y, w, h, c in boxes:
        m = _mask(size, size, x, y, w, h)
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": 1,
                "category_id": c,
                "bbox": [x, y, w, h],
                "area": float(w * h),
                "segmentation": rle.encode(m),
                "iscrowd": 0,
            }
        )
    return {"images": [{"id": 1, "width": size, "height": size}], "annotations": anns, "categories": CATEGORIES}


def _det(x: float, y: float, w: float, h: float, c: int = 1, score: float = 0.9) -> dict:
    return {"image_id": 1, "category_id": c, "score": score, "bbox": [x, y, w, h]}


def test_perfect_boxes_give_100_and_sizes_without_objects_give_none():
    gt = _gt([(10, 10, 20, 20, 1), (50, 60, 60, 50, 2)])  # areas 400 (small) and 3000 (medium)
    m = coco_metrics(gt, [_det(10, 10, 20, 20, 1), _det(50, 60, 60, 50, 2)])
    assert m["bbox_map"] == pytest.approx(100.0, abs=1e-9)
    assert m["bbox_map50"] == pytest.approx(100.0, abs=1e-9) and m["bbox_map75"] == pytest.approx(100.0, abs=1e-9)
    assert m["bbox_map_small"] == pytest.approx(100.0, abs=1e-9)
    assert m["bbox_map_medium"] == pytest.approx(100.0, abs=1e-9)
    assert m["bbox_map_large"] is None  # no large ground truth: undefined, not 0


def test_shifted_box_counts_only_the_iou_thresholds_it_passes():
    # a 10x10 box shifted 2 px: IoU = 80 / 120 = 0.667 >= 0.50, 0.55, 0.60, 0.65 only -> 4 of 10 thresholds
    m = coco_metrics(_gt([(0, 0, 10, 10, 1)]), [_det(2, 0, 10, 10)])
    assert m["bbox_map"] == pytest.approx(40.0, abs=1e-9)
    assert m["bbox_map50"] == pytest.approx(100.0, abs=1e-9)
    assert m["bbox_map75"] == pytest.approx(0.0, abs=1e-9)


def test_false_positive_ranked_first_halves_the_precision():
    # ranked detections: FP (score 0.9) then TP (0.8): precision 1/2 at recall 1, interpolated over all recalls
    m = coco_metrics(_gt([(0, 0, 40, 40, 1)]), [_det(100, 100, 40, 40, score=0.9), _det(0, 0, 40, 40, score=0.8)])
    assert m["bbox_map"] == pytest.approx(50.0, abs=1e-9)


def test_wrong_class_or_no_detections_give_zero():
    gt = _gt([(0, 0, 40, 40, 1)])
    assert coco_metrics(gt, [_det(0, 0, 40, 40, c=2)])["bbox_map"] == pytest.approx(0.0, abs=1e-9)
    assert coco_metrics(gt, [])["bbox_map"] == pytest.approx(0.0, abs=1e-9)


def test_masks_perfect_and_half():
    gt = _gt([(0, 0, 40, 40, 1)])
    full = {"image_id": 1, "category_id": 1, "score": 0.9}
    perfect = coco_metrics(gt, [{**full, "segmentation": rle.encode(_mask(200, 200, 0, 0, 40, 40))}], "segm")
    assert perfect["segm_map"] == pytest.approx(100.0, abs=1e-9)
    # the left half of the object: IoU 0.5 -> only the 0.50 threshold
    half = coco_metrics(gt, [{**full, "segmentation": rle.encode(_mask(200, 200, 0, 0, 20, 40))}], "segm")
    assert half["segm_map50"] == pytest.approx(100.0, abs=1e-9)
    assert half["segm_map"] == pytest.approx(10.0, abs=1e-9)


def test_bad_iou_type_is_a_config_error():
    with pytest.raises(ConfigError, match="iou_type"):
        coco_metrics(_gt([(0, 0, 4, 4, 1)]), [], "keypoints")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_detections_to_coco_converts_corners_and_masks():
    probs = torch.zeros(1, 1, 8, 8)
    probs[0, 0, 2:5, 1:3] = 0.9
    out = {
        "boxes": torch.tensor([[1.0, 2.0, 3.0, 5.0]]),
        "scores": torch.tensor([0.7]),
        "labels": torch.tensor([2]),
        "masks": probs,
    }
    boxes, masks = detections_to_coco(out, image_id=5, masks=True)
    assert boxes == [{"image_id": 5, "category_id": 2, "score": pytest.approx(0.7), "bbox": [1.0, 2.0, 2.0, 3.0]}]
    from pycocotools import mask as mask_utils

    assert np.array_equal(mask_utils.decode(masks[0]["segmentation"]), (probs[0, 0] > 0.5).numpy())


class _Oracle(torch.nn.Module):
    """A 'detector' that returns the ground truth of each image (looked up by its pixels' sum)."""

    def __init__(self, dataset, shift: float = 0.0):
        super().__init__()
        self.by_key = {float(dataset[i][0].sum()): dataset[i][1] for i in range(len(dataset))}
        self.shift = shift

    def forward(self, images):
        outs = []
        for x in images:
            t = self.by_key[float(x.sum())]
            boxes = t["boxes"].clone()
            boxes[:, [0, 2]] += self.shift
            out = {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": t["labels"]}
            if "masks" in t:
                out["masks"] = t["masks"][:, None].float()  # (K, 1, H, W) "probabilities"
            outs.append(out)
        return outs


def test_evaluate_detection_on_scenes_oracle_is_100(tiny_scenes):
    m = evaluate_detection(_Oracle(tiny_scenes), tiny_scenes, batch_size=3)
    assert m.bbox_map == pytest.approx(100.0, abs=1e-9) and m.images == len(tiny_scenes)
    assert m.segm_map is None
    shifted = evaluate_detection(_Oracle(tiny_scenes, shift=4.0), tiny_scenes, batch_size=3, limit=4)
    assert shifted.images == 4 and shifted.bbox_map < 100.0 - 1.0


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_evaluate_detection_with_masks_oracle_is_100(tiny_scenes):
    with_masks = SceneDataset(tiny_scenes.root, "val", masks=True)
    m = evaluate_detection(_Oracle(with_masks), with_masks, batch_size=4, masks=True)
    assert m.bbox_map == pytest.approx(100.0, abs=1e-9) and m.segm_map == pytest.approx(100.0, abs=1e-9)
    assert set(m.as_dict()) >= {"bbox_map", "bbox_map50", "segm_map", "segm_map_small", "images", "images_per_s"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode on numpy 2
def test_evaluation_leaves_the_ground_truth_as_it_was(tiny_scenes):
    with_masks = SceneDataset(tiny_scenes.root, "val", masks=True)
    before = copy.deepcopy(with_masks.coco)
    first = evaluate_detection(_Oracle(with_masks, shift=2.0), with_masks, masks=True)
    assert with_masks.coco == before  # pycocotools writes into what it is given
    second = evaluate_detection(_Oracle(with_masks, shift=2.0), with_masks, masks=True)
    assert (first.bbox_map, first.segm_map) == (second.bbox_map, second.segm_map) and with_masks.coco == before


def test_evaluate_detection_needs_coco_annotations():
    data = torch.utils.data.TensorDataset(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    with pytest.raises(DataError, match="COCO annotations"):
        evaluate_detection(_Oracle.__new__(_Oracle), data)
