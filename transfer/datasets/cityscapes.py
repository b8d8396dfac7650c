"""Cityscapes instance segmentation (gtFine): records as detectron2's ``load_cityscapes_instances``
(from the polygons json, as polygons) gives them, and the metadata its evaluator needs.

Each ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` has beside it, under ``gtFine/``, the
``<stem>_gtFine_polygons.json`` read here and the ``_instanceIds.png`` the evaluation
(cityscapesscripts) reads. In the json later objects lie on top of earlier ones, so objects
are taken from the top down, each polygon grown by half a pixel (pixel centres -> the area
they cover) and cut by everything above it, stuff included; an instance class's
``<class>group`` is a crowd; objects marked ``deleted`` and labels with a negative id (license
plate) are skipped; what an instance keeps may be several polygons. Those are detectron2's
steps and need shapely, as its loader does. Classes are Cityscapes' eight evaluated instance
classes (person, rider, car, truck, bus, train, motorcycle, bicycle) with their label ids as
the dataset ids; the labels table is cityscapesscripts'.

Differences from detectron2's loader, neither changing a record: the images are listed in
sorted order (detectron2 keeps the file system's), and a problem is one line naming the file
(an unknown label, a polygon of fewer than 3 points, a missing gtFine file, an empty folder)
where detectron2 raises a KeyError or asserts.
"""

from __future__ import annotations

import json
import os
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from mocobench import UserError

# name -> (image dir, gt dir), relative to the data root (detectron2's builtin table)
CITYSCAPES_BUILTIN = {
    "cityscapes_fine_instance_seg_train": ("cityscapes/leftImg8bit/train", "cityscapes/gtFine/train"),
    "cityscapes_fine_instance_seg_val": ("cityscapes/leftImg8bit/val", "cityscapes/gtFine/val"),
}
IMAGE_SUFFIX = "leftImg8bit.png"
GT_SUFFIXES = ("gtFine_instanceIds.png", "gtFine_labelIds.png", "gtFine_polygons.json")
INSTALL = "pip install cityscapesscripts shapely (mocobench dependencies)"


def cityscapes_labels() -> Any:
    """cityscapesscripts' labels module (names, ids, which have instances and are evaluated)."""
    try:
        from cityscapesscripts.helpers import labels
    except ImportError as e:
        raise UserError(f"Cityscapes datasets need the cityscapesscripts package ({e}): {INSTALL}") from None
    return labels


def thing_labels() -> list[Any]:
    """The evaluated instance classes, in detectron2's thing_classes order."""
    return [label for label in cityscapes_labels().labels if label.hasInstances and not label.ignoreInEval]


def cityscapes_metadata(image_dir: str, gt_dir: str) -> dict[str, Any]:
    things = thing_labels()
    return {"thing_classes": [t.name for t in things],
            "thing_dataset_id_to_contiguous_id": {t.id: i for i, t in enumerate(things)},
            "evaluator_type": "cityscapes_instance", "image_dir": image_dir, "gt_dir": gt_dir}


def cityscapes_files(image_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """(image, polygons json) of every frame, sorted; each frame's gtFine files must exist."""
    image_dir, gt_dir = Path(image_dir), Path(gt_dir)
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: Cityscapes image folder not found")
    files = []
    for city in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        for image in sorted(city.iterdir()):
            if not image.name.endswith(IMAGE_SUFFIX):
                raise UserError(f"{image}: not a Cityscapes frame (want <city>_<seq>_<frame>_{IMAGE_SUFFIX})")
            stem = image.name[: -len(IMAGE_SUFFIX)]
            gt = [gt_dir / city.name / (stem + suffix) for suffix in GT_SUFFIXES]
            missing = [str(p) for p in gt if not p.is_file()]
            if missing:
                raise UserError(f"{image}: its gtFine file(s) {', '.join(missing)} not found")
            files.append((image, gt[2]))
    if not files:
        raise UserError(f"{image_dir}: no Cityscapes frames (<city>/*_{IMAGE_SUFFIX}) found")
    return files


def polygons_file(image_file: str | os.PathLike, gt_dir: str | os.PathLike) -> Path:
    """The gtFine polygons json of a frame: the file its record's size comes from."""
    image_file = Path(image_file)
    return Path(gt_dir) / image_file.parent.name / (image_file.name[: -len(IMAGE_SUFFIX)] + GT_SUFFIXES[2])


def _read(json_file: Path) -> dict:
    try:
        doc = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{json_file}:{e.lineno}: malformed JSON: {e.msg}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("objects"), list):
        raise UserError(f"{json_file}: not a Cityscapes polygons file (no 'objects' list)")
    for side in ("imgHeight", "imgWidth"):
        if not (isinstance(doc.get(side), int) and not isinstance(doc[side], bool) and doc[side] > 0):
            raise UserError(f"{json_file}: {side} is {doc.get(side)!r} (want a positive whole number)")
    return doc


def _label(name: Any, i: int, json_file: Path, name2label: dict) -> Any:
    if isinstance(name, str) and name in name2label:
        return name2label[name]
    if isinstance(name, str) and name.endswith("group") and name[: -len("group")] in name2label:
        return name2label[name[: -len("group")]]  # a crowd of the class
    raise UserError(f"{json_file}: objects[{i}] has label {name!r}, which is not a Cityscapes label")


def _polygon(points: Any, i: int, json_file: Path) -> np.ndarray:
    coords = np.asarray(points, dtype=np.float64) if isinstance(points, list) else np.zeros((0,))
    if coords.ndim != 2 or coords.shape[1:] != (2,) or len(coords) < 3 or not np.isfinite(coords).all():
        raise UserError(f"{json_file}: objects[{i}] has a polygon that is not 3 or more [x, y] points")
    return coords


def frame_record(image_file: Path, json_file: Path) -> dict[str, Any]:
    """One frame's record (detectron2's steps; see the module docstring)."""
    from shapely.geometry import MultiPolygon, Polygon

    labels = cityscapes_labels()
    contiguous = {t.id: i for i, t in enumerate(thing_labels())}
    doc = _read(json_file)
    above = Polygon()
    annotations = []
    for i in reversed(range(len(doc["objects"]))):
        obj = doc["objects"][i]
        if not isinstance(obj, dict):
            raise UserError(f"{json_file}: objects[{i}] is not an object")
        if "deleted" in obj:
            continue
        label = _label(obj.get("label"), i, json_file, labels.name2label)
        if label.id < 0:
            continue
        # float32 as detectron2 reads them, so the grown outline is the same to the last bit
        poly = Polygon(_polygon(obj.get("polygon"), i, json_file).astype("f4") + 0.5).buffer(0.5, quad_segs=4)
        if not label.hasInstances or label.ignoreInEval:
            above = above.union(poly)
            continue
        visible = poly.difference(above)
        if visible.is_empty:
            continue
        above = above.union(poly)
        if isinstance(visible, Polygon):
            parts = [visible]
        elif isinstance(visible, MultiPolygon):
            parts = list(visible.geoms)
        else:  # a cut can leave lines or points beside areas: detectron2 refuses such a shape too
            raise UserError(f"{json_file}: objects[{i}] leaves a {visible.geom_type} once the objects above it "
                            f"are cut away")
        annotations.append({"iscrowd": obj["label"].endswith("group"), "category_id": contiguous[label.id],
                            "segmentation": [list(chain(*p.exterior.coords)) for p in parts],
                            "bbox": list(visible.bounds)})
    return {"file_name": str(image_file), "image_id": image_file.name, "height": doc["imgHeight"],
            "width": doc["imgWidth"], "annotations": annotations}


def load_cityscapes_records(image_dir: str | os.PathLike, gt_dir: str | os.PathLike
                            ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every frame's record (boxes XYXY, classes 0-based); nothing is dropped, so no counts."""
    return [frame_record(image, json_file) for image, json_file in cityscapes_files(image_dir, gt_dir)], {}
