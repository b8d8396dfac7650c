"""LVIS json (v0.5 layout): checks, metadata and records as detectron2's ``load_lvis_json`` gives them.

LVIS annotates federatedly: each image lists the categories verified absent from it
(``neg_category_ids``) and those present but not exhaustively annotated
(``not_exhaustive_category_ids``); any other category without an annotation there is unknown.
The evaluator (transfer/evaluation/lvis.py) reads these lists from the json; the records
carry them too, as detectron2's do. Categories are numbered 1..N (detectron2 maps id to id - 1,
so ids with gaps would mean the wrong classes, and are refused) and carry a ``frequency``
(r, c, f: rare, common, frequent by training images), which groups APr, APc, APf.

Images live in COCO's folders: the path is the split folder and file name at the end of
``coco_url`` (e.g. .../val2017/000000397133.jpg -> <root>/coco/val2017/000000397133.jpg), as
detectron2 reads it, since an LVIS split mixes COCO folders and its ``file_name`` need not be
the file on disk; an image without ``coco_url`` is ``file_name`` under <root>/coco/.
LVIS has no crowd annotations and only polygon masks; each one needs a polygon of 3 or more
points (detectron2 asserts this: here it is one line naming the file and annotation).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mocobench import UserError
from mocobench.transfer.datasets.coco import (_check_bbox, _check_size, _check_structure as check_structure,
                                             _is_number, _refuse_repeats, read_json)

# name -> (image root, json), relative to the data root (detectron2's builtin LVIS v0.5 table)
LVIS_BUILTIN = {
    "lvis_v0.5_train": ("coco", "lvis/lvis_v0.5_train.json"),
    "lvis_v0.5_val": ("coco", "lvis/lvis_v0.5_val.json"),
    "lvis_v0.5_val_rand_100": ("coco", "lvis/lvis_v0.5_val_rand_100.json"),
}
REQUIRED_FIELDS = {
    "images": ("id", "height", "width", "neg_category_ids", "not_exhaustive_category_ids"),
    "annotations": ("id", "image_id", "category_id", "bbox", "area", "segmentation"),
    "categories": ("id", "name", "frequency"),
}
FREQUENCIES = ("r", "c", "f")  # LVISEval's groups: rare, common, frequent


def _check_structure(data: Any, json_file: Path) -> None:
    check_structure(data, json_file, REQUIRED_FIELDS, "an LVIS file")


def _check_categories(categories: list[dict], json_file: Path) -> None:
    _refuse_repeats(categories, "id", "categories", "category id", json_file)
    ids = sorted(c["id"] for c in categories)
    if ids != list(range(1, len(ids) + 1)):
        raise UserError(f"{json_file}: category ids must be 1..{len(ids)} without gaps (LVIS numbers its "
                        f"categories so; detectron2 maps id to class id - 1), got {ids[:10]}"
                        f"{' ...' if len(ids) > 10 else ''}")
    for i, cat in enumerate(categories):
        if cat["frequency"] not in FREQUENCIES:
            raise UserError(f"{json_file}: categories[{i}] has frequency {cat['frequency']!r} "
                            f"(want one of {', '.join(FREQUENCIES)})")
        synonyms = cat.get("synonyms", [cat["name"]])
        if not (isinstance(synonyms, list) and synonyms and all(isinstance(s, str) for s in synonyms)):
            raise UserError(f"{json_file}: categories[{i}] has synonyms {synonyms!r} (want a list of names)")


def _image_path(img: dict) -> str | None:
    """<split folder>/<file> from coco_url (as detectron2), else file_name; None if neither is usable."""
    url = img.get("coco_url")
    if isinstance(url, str) and url.count("/") >= 1 and all(url.rsplit("/", 2)[-2:]):
        return "/".join(url.rsplit("/", 2)[-2:])
    name = img.get("file_name")
    return name if isinstance(name, str) and name else None


def _check_images(images: list[dict], cat_ids: set[int], json_file: Path) -> None:
    _refuse_repeats(images, "id", "images", "image id", json_file)
    for i, img in enumerate(images):
        _check_size(i, img, json_file)
        if _image_path(img) is None:
            raise UserError(f"{json_file}: images[{i}] has neither a coco_url ending in <split>/<file> nor a "
                            f"file_name, so its image cannot be found")
        for field in ("neg_category_ids", "not_exhaustive_category_ids"):
            listed = img[field]
            if not (isinstance(listed, list) and all(isinstance(c, int) and not isinstance(c, bool) for c in listed)):
                raise UserError(f"{json_file}: images[{i}] has {field} {listed!r} (want a list of category ids)")
            unknown = sorted(set(listed) - cat_ids)
            if unknown:
                raise UserError(f"{json_file}: images[{i}] lists category id(s) {unknown} in {field}, which are "
                                f"not categories of the file")


def _check_segmentation(i: int, segm: Any, json_file: Path) -> None:
    if not (isinstance(segm, list) and segm and all(isinstance(p, list) for p in segm)):
        raise UserError(f"{json_file}: annotations[{i}] has segmentation {str(segm)[:60]!r}; LVIS annotations "
                        f"are a non-empty list of polygons")
    if not all(_is_number(v) for p in segm for v in p):
        raise UserError(f"{json_file}: annotations[{i}] has a segmentation polygon with a value that is "
                        f"not a finite number")
    if any(len(p) % 2 or len(p) < 6 for p in segm):
        raise UserError(f"{json_file}: annotations[{i}] has a polygon of fewer than 3 points (or an odd number "
                        f"of values); detectron2 refuses such an LVIS annotation")


def validate_lvis(data: Any, json_file: Path) -> None:
    """Every check the module docstring names; refusals are one line naming the file."""
    _check_structure(data, json_file)
    _check_categories(data["categories"], json_file)
    cat_ids = {c["id"] for c in data["categories"]}
    _check_images(data["images"], cat_ids, json_file)
    _refuse_repeats(data["annotations"], "id", "annotations", "annotation id", json_file)
    images = {img["id"]: img for img in data["images"]}
    for i, ann in enumerate(data["annotations"]):
        img = images.get(ann["image_id"])
        if img is None:
            raise UserError(f"{json_file}: annotations[{i}] refers to image_id {ann['image_id']!r}, which is "
                            f"not in images")
        if ann["category_id"] not in cat_ids:
            raise UserError(f"{json_file}: annotations[{i}] has category_id {ann['category_id']!r}, which is "
                            f"not in categories")
        _check_bbox(i, ann["bbox"], img, json_file)
        _check_segmentation(i, ann["segmentation"], json_file)


def read_lvis(json_file: str | os.PathLike) -> dict[str, Any]:
    """The validated contents of an LVIS json."""
    json_file = Path(json_file)
    data = read_json(json_file, "LVIS annotation")
    validate_lvis(data, json_file)
    return data


def lvis_metadata(data: dict[str, Any], name: str) -> dict[str, Any]:
    """Class names by id (detectron2 takes a v0.5 category's first synonym, a v1 one's name) and
    the id map detectron2 applies (id - 1), so the evaluator maps classes back the same way."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    v1 = "v1" in name
    return {"thing_classes": [c["name"] if v1 else c.get("synonyms", [c["name"]])[0] for c in cats],
            "thing_dataset_id_to_contiguous_id": {c["id"]: c["id"] - 1 for c in cats}}


def load_lvis_records(data: dict[str, Any], json_file: str | os.PathLike, image_root: str | os.PathLike
                      ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """detectron2's LVIS dicts (boxes as XYXY, classes 0-based), images sorted by id; nothing
    is dropped (a flaw is refused when reading), so the counts are empty."""
    image_root = Path(image_root)
    if not image_root.is_dir():
        raise UserError(f"{image_root}: COCO image folder of the LVIS images not found (for {json_file})")
    by_image: dict[Any, list[dict]] = {img["id"]: [] for img in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    records = []
    for img in sorted(data["images"], key=lambda im: im["id"]):
        annotations = []
        for ann in by_image[img["id"]]:
            x, y, w, h = (float(v) for v in ann["bbox"])
            annotations.append({"bbox": [x, y, x + w, y + h], "category_id": ann["category_id"] - 1,
                                "segmentation": ann["segmentation"]})
        file_name = image_root / _image_path(img)
        if not file_name.is_file():
            raise UserError(f"{file_name}: image {img['id']!r} (listed in {json_file}) not found")
        records.append({"file_name": str(file_name), "height": img["height"],
                        "width": img["width"], "not_exhaustive_category_ids": img["not_exhaustive_category_ids"],
                        "neg_category_ids": img["neg_category_ids"], "image_id": img["id"],
                        "annotations": annotations})
    return records, {}
