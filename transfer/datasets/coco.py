"""COCO instances JSON -> detectron2-format dataset dicts, through pycocotools.

Follows detectron2's ``load_coco_json``: images sorted by id, categories mapped to
contiguous ids in sorted-id order, boxes from XYWH to XYXY, uncompressed RLE compressed,
polygons with fewer than 3 points dropped (an instance left without any is skipped).
The file is validated first so that a missing field is an error naming the file, not a
KeyError deep inside pycocotools, and so that ground truth which would quietly change AP is
refused: repeated image, annotation or category ids (or category names), image sizes that are
not positive whole numbers, a bbox that is not 4 finite numbers with w, h >= 0 or that lies
entirely outside its image, and polygons with non-finite values. A box reaching partly
outside its image is kept as COCO's evaluation scores it, counted in one warning per load
(docs/DATA_CHECKS.md lists every check). Keypoints, when present, are checked and
shifted as transfer/datasets/coco_keypoints.py says.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from mocobench import UserError
from mocobench.transfer.datasets.coco_keypoints import check_keypoints, record_keypoints

REQUIRED_FIELDS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "iscrowd"),
    "categories": ("id", "name"),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse_repeats(items: list[dict], key: str, section: str, what: str, json_file: Path) -> None:
    """Ids (or names) that must be unique: pycocotools keeps the last entry of a repeated one."""
    first: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item[key]
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            raise UserError(f"{json_file}: {section}[{i}] has {what} {value!r} (want an integer or a string)")
        if value in first:
            raise UserError(f"{json_file}: {section}[{i}] repeats {what} {value!r} of "
                            f"{section}[{first[value]}] (each {what} must be unique)")
        first.setdefault(value, i)


def _check_structure(data: Any, json_file: Path, required: dict[str, tuple[str, ...]] | None = None,
                     kind: str = "a COCO instances file") -> None:
    """Each section of ``required`` (default: COCO's) a list of objects holding its fields."""
    if not isinstance(data, dict):
        raise UserError(f"{json_file}: not {kind} (top level is not an object)")
    for section, fields in (REQUIRED_FIELDS if required is None else required).items():
        if not isinstance(data.get(section), list):
            raise UserError(f"{json_file}: missing list {section!r}")
        for i, item in enumerate(data[section]):
            if not isinstance(item, dict):
                raise UserError(f"{json_file}: {section}[{i}] is not an object: {item!r}")
            missing = [f for f in fields if f not in item]
            if missing:
                raise UserError(f"{json_file}: {section}[{i}] is missing field(s) {', '.join(missing)}"
                                + ("" if required is None else f" ({kind} needs them)"))


def _check_images(images: list[dict], json_file: Path) -> None:
    _refuse_repeats(images, "id", "images", "image id", json_file)
    for i, img in enumerate(images):
        _check_size(i, img, json_file)


def _check_size(i: int, img: dict, json_file: Path) -> None:
    """images[i]'s width and height: positive whole numbers."""
    for side in ("width", "height"):
        value = img[side]
        if not (_is_number(value) and value > 0 and float(value).is_integer()):
            raise UserError(f"{json_file}: images[{i}] has {side} {value!r} (want a positive whole number)")


def _check_bbox(i: int, bbox: Any, img: dict, json_file: Path) -> None:
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))
            and bbox[2] >= 0 and bbox[3] >= 0):
        raise UserError(f"{json_file}: annotations[{i}] has an invalid bbox {bbox!r} "
                        f"(want 4 finite numbers x, y, w>=0, h>=0)")
    if _outside(bbox, img):
        raise UserError(f"{json_file}: annotations[{i}] lies outside its {img['width']}x{img['height']} "
                        f"image {img['id']!r}: bbox {bbox!r}; no detection can match it")


def _outside(bbox: list[float], img: dict) -> bool:
    """No part of the box inside the image (a zero-size box may still touch its border)."""
    x, y, w, h = bbox
    ix = min(x + w, img["width"]) - max(x, 0.0)
    iy = min(y + h, img["height"]) - max(y, 0.0)
    return ix < 0 or iy < 0 or (w > 0 and ix == 0) or (h > 0 and iy == 0)


def _check_segmentation(i: int, segm: Any, json_file: Path) -> None:
    """Polygons of finite numbers (a NaN vertex rasterises to garbage); RLEs are pycocotools' own."""
    if isinstance(segm, dict):
        if not {"size", "counts"} <= set(segm):
            raise UserError(f"{json_file}: annotations[{i}] has an RLE segmentation without size and counts")
        return
    if not isinstance(segm, list) or not all(isinstance(p, list) for p in segm):
        raise UserError(f"{json_file}: annotations[{i}] has a segmentation that is neither a list of "
                        f"polygons nor an RLE")
    if not all(_is_number(v) for p in segm for v in p):
        raise UserError(f"{json_file}: annotations[{i}] has a segmentation polygon with a value that is "
                        f"not a finite number")


def _validate(data: Any, json_file: Path, keypoints: bool = False) -> None:
    _check_structure(data, json_file)
    _check_images(data["images"], json_file)
    _refuse_repeats(data["categories"], "id", "categories", "category id", json_file)
    _refuse_repeats(data["categories"], "name", "categories", "category name", json_file)
    _refuse_repeats(data["annotations"], "id", "annotations", "annotation id", json_file)
    images = {img["id"]: img for img in data["images"]}
    category_ids = {cat["id"] for cat in data["categories"]}
    if not category_ids:
        raise UserError(f"{json_file}: no categories")
    for i, ann in enumerate(data["annotations"]):
        if ann["image_id"] not in images:
            raise UserError(f"{json_file}: annotations[{i}] names unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in category_ids:
            raise UserError(f"{json_file}: annotations[{i}] names unknown category_id {ann['category_id']!r}")
        _check_bbox(i, ann["bbox"], images[ann["image_id"]], json_file)
        if ann.get("segmentation"):
            _check_segmentation(i, ann["segmentation"], json_file)
    if keypoints or any("keypoints" in a for a in data["annotations"]):
        check_keypoints(data, json_file, required=keypoints)


def _past_border(bbox: list[float], img: dict) -> bool:
    x, y, w, h = bbox
    return x < 0 or y < 0 or x + w > img["width"] or y + h > img["height"]


def boxes_past_border(api: COCO) -> tuple[int, Any]:
    """(how many boxes reach outside their image, the first one's annotation id)."""
    past = [ann["id"] for ann in api.dataset["annotations"] if _past_border(ann["bbox"], api.imgs[ann["image_id"]])]
    return len(past), past[0] if past else None


def read_json(json_file: Path, what: str) -> Any:
    """The parsed contents of an annotation file (``what``: its kind, for the refusals), or a one-line
    refusal where it is missing or not JSON."""
    if not json_file.is_file():
        raise UserError(f"{json_file}: {what} file not found")
    try:
        return json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{json_file}:{e.lineno}: malformed JSON: {e.msg}") from None


def read_coco_api(json_file: str | os.PathLike, keypoints: bool = False) -> COCO:
    """A validated pycocotools COCO object (the evaluator's ground truth); ``keypoints``:
    a person_keypoints file, whose categories must all name their keypoints."""
    json_file = Path(json_file)
    data = read_json(json_file, "COCO annotation")
    _validate(data, json_file, keypoints)
    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    past, first = boxes_past_border(api)
    if past:  # kept as they are: COCO's own evaluation scores these boxes unclipped
        warnings.warn(f"{json_file}: {past} box(es) reach outside their image (kept as they are, as COCO "
                      f"scores them), first annotation id {first!r}", stacklevel=2)
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
    return load_coco_records(api, json_file, image_root)[0]


def load_coco_records(api: COCO, json_file: str | os.PathLike, image_root: str | os.PathLike
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records, counts of what loading dropped or kept despite a flaw), warning once for each."""
    id_map = coco_metadata(api)["thing_dataset_id_to_contiguous_id"]
    image_root = Path(image_root).resolve()
    if not image_root.is_dir():
        raise UserError(f"{image_root}: COCO image folder not found (for {json_file})")
    records, dropped = [], 0
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
            if ann.get("keypoints"):  # as detectron2: an empty list is no keypoints
                obj["keypoints"] = record_keypoints(ann["keypoints"])
            if ann.get("segmentation"):
                segm = _segmentation(ann["segmentation"])
                if segm is None:
                    dropped += 1
                    continue  # as detectron2: an instance without a valid polygon is dropped
                obj["segmentation"] = segm
            annotations.append(obj)
        records.append({"file_name": str(file_name), "image_id": image_id, "height": img["height"],
                        "width": img["width"], "annotations": annotations})
    if dropped:
        warnings.warn(f"{json_file}: dropped {dropped} instance(s) without a polygon of 3 or more points "
                      f"(as detectron2 does)", stacklevel=2)
    counts = {"instances_without_valid_polygon": dropped, "boxes_past_border": boxes_past_border(api)[0]}
    return records, {k: v for k, v in counts.items() if v}
