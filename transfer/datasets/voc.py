"""PASCAL VOC detection annotations -> detectron2-format dataset dicts.

Reads the devkit layout (``VOC<year>/{Annotations,ImageSets/Main,JPEGImages}``) the way
detectron2's ``pascal_voc`` loader does, so both engines train on identical boxes:
difficult objects are kept (only the evaluator ignores them) and the devkit's 1-based
inclusive pixel boxes become ``(xmin - 1, ymin - 1, xmax, ymax)``.

Class list: a dataset may declare its own classes in ``VOC<year>/classes.txt`` (one name
per line, in contiguous-id order); without that file the 20 VOC classes apply.

Boxes: ``xmax < xmin`` (or ``ymax < ymin``) is an error naming the file; a box reaching
outside the image is clipped to it and counted in one warning per load (real VOC has a few
boxes on the border), unless nothing is left after clipping, which is an error. An image id
listed twice in a split file (its objects would count twice) and a number in the XML that is
not finite are errors too; docs/DATA_CHECKS.md lists every check.
"""

from __future__ import annotations

import math
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

from mocobench import UserError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CLASSES_FILE = "classes.txt"


def voc_class_names(dirname: str | os.PathLike) -> list[str]:
    """The dataset's declared classes (``classes.txt``), else the 20 VOC classes."""
    path = Path(dirname) / CLASSES_FILE
    if not path.is_file():
        return list(VOC_CLASSES)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: declares no class names (expected one per line)")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: a class name is listed twice")
    return names


def voc_folder(root: Path, year: int, dataset: str) -> Path:
    """``root/VOC<year>``, resolved; refused, naming ``dataset``, when it is not a folder."""
    dirname = (root / f"VOC{year}").resolve()
    if not dirname.is_dir():
        raise UserError(f"{dirname}: VOC folder for dataset {dataset!r} not found")
    return dirname


def read_split(dirname: str | os.PathLike, split: str) -> list[str]:
    """Image ids of ``ImageSets/Main/<split>.txt`` (first column, as in the devkit)."""
    dirname = Path(dirname)
    if not dirname.is_dir():
        raise UserError(f"{dirname}: VOC folder not found")
    path = dirname / "ImageSets" / "Main" / f"{split}.txt"
    # <class>_<split>.txt files are per-class labels, not splits
    return read_image_ids(path, sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem))


def read_image_ids(path: Path, splits_here: Sequence[str]) -> list[str]:
    """The image ids a VOC split file lists (first column), in file order; refused when the file is
    missing (naming ``splits_here``), empty, or lists an image twice (its boxes or pixels would
    count twice)."""
    if not path.is_file():
        raise UserError(f"{path}: split file not found (splits here: {', '.join(splits_here) or 'none'})")
    first_line: dict[str, int] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        image_id = line.split()[0]
        if image_id in first_line:
            raise UserError(f"{path}:{number}: image id {image_id!r} is listed twice (lines "
                            f"{first_line[image_id]} and {number}); list each image once")
        first_line[image_id] = number
    if not first_line:  # else a VOC07+12 job would silently train on one year alone
        raise UserError(f"{path}: split file lists no images")
    return list(first_line)


def _text(node: ET.Element, tag: str, file: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise UserError(f"{file}: <{node.tag}> has no <{tag}>")
    return child.text.strip()


def _number(node: ET.Element, tag: str, file: Path) -> float:
    text = _text(node, tag, file)
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{file}: <{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):  # float() reads 'nan' and 'inf'
        raise UserError(f"{file}: <{tag}> is not a finite number: {text!r}")
    return value


def parse_annotation(file: Path, class_names: Sequence[str]) -> tuple[dict[str, Any], int]:
    """One XML file -> (record without file_name/image_id, number of boxes clipped)."""
    try:
        root = ET.parse(file).getroot()
    except ET.ParseError as e:
        raise UserError(f"{file}:{e.position[0]}: malformed XML: {e}") from None
    size = root.find("size")
    if size is None:
        raise UserError(f"{file}: no <size>")
    width, height = _number(size, "width", file), _number(size, "height", file)
    if width <= 0 or height <= 0 or not (width.is_integer() and height.is_integer()):
        raise UserError(f"{file}: image size {width:g}x{height:g} is not positive whole numbers of pixels")
    class_ids = {name: i for i, name in enumerate(class_names)}
    annotations, clipped = [], 0
    for index, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", file)
        if name not in class_ids:
            raise UserError(f"{file}: object {index} has unknown category {name!r} "
                            f"(known: {', '.join(class_names)})")
        box = obj.find("bndbox")
        if box is None:
            raise UserError(f"{file}: object {index} ({name}) has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(box, t, file) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise UserError(f"{file}: object {index} ({name}) has xmax < xmin or ymax < ymin: "
                            f"({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
        # 1-based inclusive pixel indices -> continuous coordinates, as detectron2 loads them.
        x0, y0, x1, y1 = xmin - 1.0, ymin - 1.0, xmax, ymax
        inside = [min(max(x0, 0.0), width), min(max(y0, 0.0), height),
                  min(max(x1, 0.0), width), min(max(y1, 0.0), height)]
        if inside != [x0, y0, x1, y1]:
            if inside[2] <= inside[0] or inside[3] <= inside[1]:
                raise UserError(f"{file}: object {index} ({name}) lies outside the "
                                f"{width:g}x{height:g} image: ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})")
            clipped += 1
        difficult = obj.find("difficult")
        annotations.append({
            "bbox": inside,
            "category_id": class_ids[name],
            "iscrowd": 0,
            "difficult": difficult is not None and (difficult.text or "0").strip() == "1",
        })
    return {"height": int(height), "width": int(width), "annotations": annotations}, clipped


def load_voc_instances(dirname: str | os.PathLike, split: str,
                       class_names: Sequence[str]) -> list[dict[str, Any]]:
    """All images of one split, in the order of the split file."""
    return load_voc_split(dirname, split, class_names)[0]


def load_voc_split(dirname: str | os.PathLike, split: str, class_names: Sequence[str]
                   ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(records of one split, counts of what loading changed), warning once when it changed any."""
    dirname = Path(dirname).resolve()
    records, clipped, first_clipped = [], 0, None
    split_file = dirname / "ImageSets" / "Main" / f"{split}.txt"
    for image_id in read_split(dirname, split):
        xml_file = dirname / "Annotations" / f"{image_id}.xml"
        jpeg_file = dirname / "JPEGImages" / f"{image_id}.jpg"
        if not xml_file.is_file():
            raise UserError(f"{xml_file}: annotation of image {image_id!r} (listed in {split_file}) not found")
        if not jpeg_file.is_file():
            raise UserError(f"{jpeg_file}: image {image_id!r} (listed in {split_file}) not found")
        record, n = parse_annotation(xml_file, class_names)
        if n and first_clipped is None:
            first_clipped = xml_file
        clipped += n
        records.append({"file_name": str(jpeg_file), "image_id": image_id, **record})
    counts = {}
    if clipped:
        warnings.warn(f"{dirname} ({split}): clipped {clipped} box(es) reaching outside their "
                      f"image to the image, first in {first_clipped}", stacklevel=2)
        counts["boxes_clipped"] = clipped
    # counted here, warned of where it changes a number: when the split is evaluated (evaluation/voc.py)
    absent = classes_without_ground_truth(records, class_names)
    if absent:
        counts["classes_without_ground_truth"] = len(absent)
    return records, counts


def classes_without_ground_truth(records: Sequence[dict[str, Any]], class_names: Sequence[str]) -> list[str]:
    """The classes no record has a box of that is not difficult: the devkit's AP divides by that
    count, so theirs is undefined and the evaluator leaves them out of the mean."""
    seen = {a["category_id"] for r in records for a in r["annotations"] if not a.get("difficult", False)}
    return [name for i, name in enumerate(class_names) if i not in seen]
