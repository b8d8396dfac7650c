"""COCO instances JSON -> detectron2-format dataset dicts, through pycocotools.

Follows detectron2's ``load_coco_json``: images sorted by id, categories mapped to
contiguous ids in sorted-id order, boxes from XYWH to XYXY, uncompressed RLE compressed,
polygons with fewer than 3 points dropped (an instance left without any is skipped).
The file is validated first so that a missing field is an error naming the file, not a
KeyError deep inside pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mocobench import UserError

REQUIRED_FIELDS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("id", "name"),
}


def _validate(data: Any, json_file: Path) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{json_file}: not a COCO instances file (top level is not an object)")
    for section, fields in REQUIRED_FIELDS.items():
        if not isinstance(data.get(section), list):
            raise UserError(f"{json_file}: missing list {section!r}")
        for i, item in enumerate(data[section]):
            missing = [f for f in fields if f not in item]
            if missing:
                raise UserError(f"{json_file}: {section}[{i}] is missing field(s) {', '.join(missing)}")
    image_ids = {img["id"] for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    if not category_ids:
        raise UserError(f"{json_file}: no categories")
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in image_ids:
            raise UserError(f"{json_file}: annotations[{i}] names unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{json_file}: annotations[{i}] names unknown category_id {ann['category_id']!r}")
        bbox = ann["bbox"]
        if len(bbox) != 4 or bbox[2] < 0 or bbox[3] < 0:
            raise UserError(f"{json_file}: annotations[{i}] has an invalid bbox {bbox!r} (want x, y, w>=0, h>=0)")


def read_coco_api(json_file: str | os.PathLike) -> COCO:
    """A validated pycocotools COCO object (the evaluator's ground truth)."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise UserError(f"{json_file}: COCO annotation file not found")
    try:
        data = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{json_file}:{e.lineno}: malformed JSON: {e.msg}") from None
    _validate(data, json_file)
    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def coco_metadata(api: COCO) -> dict[str, Any]:
    cat_ids = sorted(api.getCatIds())
    return {
        "thing_classes": [api.cats[i]["name"] for i in cat_ids],
        "thing_dataset_id_to_contiguous_id": {cid: i for i, cid in enumerate(cat_ids)},
    }


def _segmentation(segm: Any) -> Any:
    """Compressed RLE (counts as str) or the valid polygons; None when none is valid."""
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):
            segm = mask_util.frPyObjects(segm, *segm["size"])
        counts = segm["counts"]
        return {"size": list(segm["size"]),
                "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def coco_records(api: COCO, json_file: str | os.PathLike, image_root: str | os.PathLike
                 ) -> list[dict[str, Any]]:
    """The records of a validated ``read_coco_api(json_file)``, images under image_root."""
    id_map = coco_metadata(api)["thing_dataset_id_to_contiguous_id"]
    image_root = Path(image_root).resolve()
    if not image_root.is_dir():
        raise UserError(f"{image_root}: COCO image folder not found (for {json_file})")
    records = []
    for image_id in sorted(api.imgs):
        img = api.imgs[image_id]
        file_name = image_root / img["file_name"]
        if not file_name.is_file():
            raise UserError(f"{file_name}: image {image_id!r} (listed in {json_file}) not found")
        annotations = []
        for ann in api.imgToAnns[image_id]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            obj = {"bbox": [x, y, x + w, y + h], "category_id": id_map[ann["category_id"]],
                   "iscrowd": int(ann["iscrowd"])}
            if ann.get("segmentation"):
                segm = _segmentation(ann["segmentation"])
                if segm is None:
                    continue  # as detectron2: an instance without a valid polygon is dropped
                obj["segmentation"] = segm
            annotations.append(obj)
        records.append({"file_name": str(file_name), "image_id": image_id, "height": img["height"],
                        "width": img["width"], "annotations": annotations})
    return records
