"""COCO loading through pycocotools and COCOeval metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from detection_fixtures import write_coco
from mocobench import UserError
from mocobench.transfer.datasets.catalog import get_dataset
from mocobench.transfer.evaluation import evaluate


def square(x, y, s):
    return [x, y, x + s, y, x + s, y + s, x, y + s]


def coco_data() -> dict:
    """Three images; categories listed out of id order; polygons and a crowd RLE."""
    crowd = np.zeros((100, 120), np.uint8)
    crowd[60:80, 5:30] = 1
    crowd_rle = {"size": [100, 120], "counts": [int(c) for c in _uncompressed_counts(crowd)]}
    anns = [
        (1, 1, 3, [square(10, 10, 40)], 0),  # medium (1600 px)
        (2, 1, 1, [square(60, 20, 20)], 0),
        (3, 1, 7, crowd_rle, 1),
        (4, 2, 7, [square(5, 5, 10), square(30, 30, 8)], 0),  # two polygons, one object
        (6, 3, 3, [square(2, 3, 12)], 0),
    ]
    annotations = []
    for ann_id, image_id, cat, segm, crowd_flag in anns:
        h, w = (100, 120) if image_id == 1 else (48, 64)
        rles = mask_util.frPyObjects(segm, h, w)
        rle = mask_util.merge(rles) if isinstance(rles, list) else rles
        annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": segm,
                            "area": float(mask_util.area(rle)), "bbox": mask_util.toBbox(rle).tolist(),
                            "iscrowd": crowd_flag})
    return {
        "images": [{"id": 1, "file_name": "000001.jpg", "height": 100, "width": 120},
                   {"id": 3, "file_name": "000003.jpg", "height": 48, "width": 64},
                   {"id": 2, "file_name": "000002.jpg", "height": 48, "width": 64}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "seven"}, {"id": 1, "name": "one"}, {"id": 3, "name": "three"}],
    }


def _uncompressed_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE: run lengths of the column-major mask, starting with zeros."""
    flat = mask.flatten(order="F")
    runs, current, n = [], 0, 0
    for v in flat:
        if v == current:
            n += 1
        else:
            runs.append(n)
            current, n = v, 1
    return runs + [n]


def test_loader_follows_detectron2(tmp_path):
    data = coco_data()
    data["annotations"].append({"id": 5, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 5]],
                                "area": 16.0, "bbox": [1, 1, 4, 4], "iscrowd": 0})  # < 3 points
    json_file = write_coco(tmp_path, "val2017", data)
    records, meta = get_dataset("coco_2017_val", tmp_path)
    assert meta["thing_classes"] == ["one", "three", "seven"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {1: 0, 3: 1, 7: 2}
    assert (meta["evaluator_type"], meta["json_file"]) == ("coco", str(json_file.resolve()))
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert records[0]["file_name"] == str((tmp_path / "coco/val2017/000001.jpg").resolve())
    first, second, crowd = records[0]["annotations"]
    assert first["bbox"] == pytest.approx([10, 10, 50, 50]) and first["category_id"] == 1
    assert first["segmentation"] == [square(10, 10, 40)] and first["iscrowd"] == 0
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 2
    assert isinstance(crowd["segmentation"]["counts"], str)  # compressed RLE
    assert mask_util.area(crowd["segmentation"]) == 20 * 25
    assert len(records[1]["annotations"]) == 1  # the 2-point polygon's instance is dropped


def ground_truth_results(data: dict) -> list[dict]:
    results = []
    for ann in data["annotations"]:
        if ann["iscrowd"]:
            continue
        img = next(i for i in data["images"] if i["id"] == ann["image_id"])
        rle = mask_util.merge(mask_util.frPyObjects(ann["segmentation"], img["height"], img["width"]))
        results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"],
                        "score": 1.0, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return results


def test_ground_truth_as_detections_scores_100(tmp_path):
    data = coco_data()
    write_coco(tmp_path, "val2017", data)
    metrics = evaluate("coco_2017_val", tmp_path, ground_truth_results(data))
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert set(m) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert (m["AP"], m["AP50"], m["AP75"], m["APs"], m["APm"]) == pytest.approx((100,) * 5)
        assert math.isnan(m["APl"])  # no large object: COCOeval's -1 becomes NaN, as detectron2


def test_boxes_only_and_imperfect_detections(tmp_path):
    data = coco_data()
    write_coco(tmp_path, "val2017", data)
    results = [{k: v for k, v in r.items() if k != "segmentation"} for r in ground_truth_results(data)]
    results[0]["bbox"] = [10, 10, 40, 20]  # IoU 0.5 with its object
    metrics = evaluate("coco_2017_val", tmp_path, results)
    assert set(metrics) == {"bbox"}
    assert 50 < metrics["bbox"]["AP"] < 100 and metrics["bbox"]["AP50"] == pytest.approx(100)
    assert math.isnan(evaluate("coco_2017_val", tmp_path, [])["bbox"]["AP"])


@pytest.mark.parametrize("damage, message", [
    (lambda d: d["annotations"][2].pop("area"), r"instances_val2017\.json: annotations\[2\] is missing field\(s\) area"),
    (lambda d: d["images"][1].pop("height"), r"instances_val2017\.json: images\[1\] is missing field\(s\) height"),
    (lambda d: d.pop("categories"), r"instances_val2017\.json: missing list 'categories'"),
    (lambda d: d["annotations"][0].update(category_id=2), r"annotations\[0\] names unknown category_id 2"),
    (lambda d: d["annotations"][0].update(image_id=9), r"annotations\[0\] names unknown image_id 9"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, -3, 4]), r"annotations\[0\] has an invalid bbox"),
])
def test_bad_coco_json_names_file_and_field(tmp_path, damage, message):
    data = coco_data()
    json_file = write_coco(tmp_path, "val2017", data)
    damage(data)
    json_file.write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        get_dataset("coco_2017_val", tmp_path)


def test_bad_coco_files(tmp_path):
    with pytest.raises(UserError, match=r"instances_val2017\.json: COCO annotation file not found"):
        get_dataset("coco_2017_val", tmp_path)
    json_file = write_coco(tmp_path, "val2017", coco_data())
    (tmp_path / "coco/val2017/000002.jpg").unlink()
    with pytest.raises(UserError, match=r"000002\.jpg: image 2 \(listed in .*instances_val2017\.json\) not found"):
        get_dataset("coco_2017_val", tmp_path)
    json_file.write_text('{"images": [\n  1,,\n]}')
    with pytest.raises(UserError, match=r"instances_val2017\.json:2: malformed JSON"):
        get_dataset("coco_2017_val", tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"image_id": 99}, r"res\.json: detection 1 names image_id 99"),
    ({"category_id": 2}, r"res\.json: detection 1 names category_id 2"),
    ({"segmentation": [1, 2]}, r"res\.json: detection 1 has a segmentation that is not an RLE"),
])
def test_bad_detections_are_named(tmp_path, change, message):
    data = coco_data()
    write_coco(tmp_path, "val2017", data)
    results = ground_truth_results(data)
    results[1].update(change)
    with pytest.raises(UserError, match=message):
        evaluate("coco_2017_val", tmp_path, results, source="res.json")
    del results[0]["segmentation"]
    with pytest.raises(UserError, match="for all or none"):
        evaluate("coco_2017_val", tmp_path, results[:1] + ground_truth_results(data)[1:], source="res.json")
