"""``paired_bootstrap``: the bootstrap's mAP on the whole image set is COCO's, and its noise behaves."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pycocotools")

from vitcompress.errors import ConfigError, DataError  # noqa: E402
from vitcompress.eval.detection import coco_metrics  # noqa: E402
from vitcompress.eval.detection_noise import paired_bootstrap  # noqa: E402

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def _set(n_images: int = 40, seed: int = 0) -> tuple[dict, list[dict], list[dict]]:
    """``n_images`` images with 1-3 boxes each; two detectors: ``a`` jitters the boxes by 1 px, ``b`` by 4 px
    and misses some objects, both with a few false positives."""
    rng = np.random.default_rng(seed)
    images, anns, det_a, det_b = [], [], [], []
    for img in range(1, n_images + 1):
        images.append({"id": img, "width": 200, "height": 200})
        for _ in range(int(rng.integers(1, 4))):
            x, y = rng.uniform(0, 120, 2)
            w, h = rng.uniform(20, 70, 2)
            c = int(rng.integers(1, 3))
            anns.append(
                {"id": len(anns) + 1, "image_id": img, "category_id": c, "bbox": [x, y, w, h], "area": w * h}
                | {"iscrowd": 0}
            )
            for dets, jitter, keep in ((det_a, 1.0, 1.0), (det_b, 4.0, 0.8)):
                if rng.random() < keep:
                    dx, dy = rng.normal(0, jitter, 2)
                    dets.append(
                        {
                            "image_id": img,
                            "category_id": c,
                            "score": float(rng.uniform(0.3, 1)),
                            "bbox": [x + dx, y + dy, w, h],
                        }
                    )
        for dets in (det_a, det_b):
            dets.append(
                {"image_id": img, "category_id": 1, "score": float(rng.uniform(0, 0.6)), "bbox": [150, 150, 30, 30]}
            )
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, det_a, det_b


def test_whole_set_map_is_cocos_and_the_noise_is_positive():
    gt, a, b = _set()
    ids = [im["id"] for im in gt["images"]]
    noise = paired_bootstrap(gt, a, b, ids, resamples=200, seed=0)
    assert noise.map_a == pytest.approx(coco_metrics(gt, a)["bbox_map"], abs=1e-9)
    assert noise.map_b == pytest.approx(coco_metrics(gt, b)["bbox_map"], abs=1e-9)
    assert noise.delta == pytest.approx(noise.map_b - noise.map_a, abs=1e-12)
    assert noise.delta < 0  # b is the worse detector by construction
    assert noise.se_delta > 0 and noise.se_a > 0 and noise.se_b > 0
    assert noise.ci_low < noise.delta < noise.ci_high
    assert noise.resamples == 200 and noise.images == 40


def test_equal_detectors_have_no_paired_noise_but_unpaired_noise():
    gt, a, _ = _set(seed=1)
    ids = [im["id"] for im in gt["images"]]
    noise = paired_bootstrap(gt, a, a, ids, resamples=50)
    assert noise.delta == 0.0 and noise.se_delta == 0.0  # the same draw for both: exactly equal
    assert noise.se_a == pytest.approx(noise.se_b, abs=0) and noise.se_a > 0


def _duplicated(gt: dict, dets: list[dict], positions: list[int]) -> tuple[dict, list[dict]]:
    """The images at ``positions`` copied under new ids (a repeat is a new image), with their objects and detections."""
    ids = [im["id"] for im in gt["images"]]
    images, anns, out = [], [], []
    for new_id, pos in enumerate(positions, start=1):
        old = ids[pos]
        images.append({"id": new_id, "width": 200, "height": 200})
        for a in gt["annotations"]:
            if a["image_id"] == old:
                anns.append(a | {"id": len(anns) + 1, "image_id": new_id})
        out += [d | {"image_id": new_id} for d in dets if d["image_id"] == old]
    return {"images": images, "annotations": anns, "categories": CATEGORIES}, out


def test_a_draw_with_repeats_is_cocos_map_of_the_images_copied():
    from vitcompress.eval.detection_noise import _Matched

    gt, a, _ = _set(seed=2)
    matched = _Matched(gt, a, "bbox", [im["id"] for im in gt["images"]])
    for positions in ([0, 0, 1, 5, 5, 5, 9], [3, 7, 7, 11, 20, 20, 20, 20, 39]):
        dup_gt, dup_dets = _duplicated(gt, a, positions)
        expected = coco_metrics(dup_gt, dup_dets)["bbox_map"]
        assert matched.map(np.array(positions)) == pytest.approx(expected, abs=1e-9)


def test_a_draw_of_one_image_repeated_is_that_image_alone():
    # drawing image 3 (and only it) many times gives the same AP as scoring image 3 alone
    from vitcompress.eval.detection_noise import _Matched

    gt, a, _ = _set(seed=4)
    ids = [im["id"] for im in gt["images"]]
    matched = _Matched(gt, a, "bbox", ids)
    alone = coco_metrics(gt, a, image_ids=[ids[2]])["bbox_map"]
    assert matched.map(np.array([2, 2, 2])) == pytest.approx(alone, abs=1e-9)


def test_bad_arguments_are_one_line_errors():
    gt, a, b = _set(n_images=3)
    with pytest.raises(ConfigError, match="iou_type"):
        paired_bootstrap(gt, a, b, [1, 2, 3], iou_type="keypoints")
    with pytest.raises(ConfigError, match="resamples"):
        paired_bootstrap(gt, a, b, [1, 2, 3], resamples=0)
    with pytest.raises(DataError, match="no images"):
        paired_bootstrap(gt, a, b, [])
