"""Annotation files in the real PASCAL VOC and COCO formats, as text built from scene objects.

Why mimic the real files field for field: the readers and evaluators that run on the
synthetic data are the ones that run on the real datasets, so the synthetic data must
exercise the real formats' conventions (VOC's 1-based inclusive pixel boxes and
difficult/truncated flags; COCO's non-contiguous category ids, [x, y, w, h] boxes,
polygon segmentations and polygon areas).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Iterable, Sequence

from mocobench.transfer.datasets.scene import SceneObject
from mocobench.transfer.datasets.shapes import polygon_area
from mocobench.transfer.datasets.synth_scales import ObjectClass, SceneSpec

SOURCE = "mocobench synthetic"


def is_difficult(obj: SceneObject, spec: SceneSpec) -> bool:
    """Small or mostly hidden: what VOC annotators flag as difficult."""
    x0, y0, x1, y1 = obj.box
    return min(x1 - x0 + 1, y1 - y0 + 1) < spec.difficult_min_side or obj.visible < spec.difficult_visible


def voc_xml(folder: str, filename: str, width: int, height: int, objects: Sequence[SceneObject],
            classes: Sequence[ObjectClass], spec: SceneSpec) -> str:
    root = ET.Element("annotation")
    _leaf(root, "folder", folder)
    _leaf(root, "filename", filename)
    source = ET.SubElement(root, "source")
    for key, value in (("database", f"The {folder} Database ({SOURCE})"), ("annotation", SOURCE), ("image", SOURCE)):
        _leaf(source, key, value)
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        _leaf(size, key, value)
    _leaf(root, "segmented", 0)
    for obj in objects:
        node = ET.SubElement(root, "object")
        _leaf(node, "name", classes[obj.class_index].name)
        _leaf(node, "pose", "Unspecified")
        _leaf(node, "truncated", int(obj.truncated))
        _leaf(node, "difficult", int(is_difficult(obj, spec)))
        box = ET.SubElement(node, "bndbox")
        x0, y0, x1, y1 = obj.box
        for key, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1 + 1), ("ymax", y1 + 1)):
            _leaf(box, key, value)  # VOC: 1-based, inclusive pixel indices
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


def _leaf(parent: ET.Element, tag: str, value: object) -> None:
    ET.SubElement(parent, tag).text = str(value)


def voc_image_sets(splits: dict[str, list[str]], labels: dict[str, list[tuple[int, bool]]],
                   class_names: Sequence[str]) -> dict[str, str]:
    """ImageSets/Main files: ``<split>.txt`` and per-class ``<class>_<split>.txt``, whose
    labels are 1 (present), 0 (present but only as difficult) or -1 (absent), as in VOC."""
    files: dict[str, str] = {}
    for split, ids in splits.items():
        files[f"{split}.txt"] = "".join(f"{i}\n" for i in ids)
        for c, name in enumerate(class_names):
            lines = []
            for i in ids:
                flags = [difficult for cls, difficult in labels[i] if cls == c]
                present = 1 if not all(flags) else 0
                lines.append(f"{i} {present if flags else -1:2d}\n")
            files[f"{name}_{split}.txt"] = "".join(lines)
    return files


def coco_json(images: Iterable[dict], annotations: Iterable[dict], classes: Sequence[ObjectClass],
              description: str, categories: Sequence[dict] = ()) -> str:
    """The file's text; ``categories`` (e.g. person with its keypoints) follow the classes'."""
    doc = {
        "info": {"description": description, "version": "1.0", "year": 2017, "contributor": SOURCE,
                 "url": "", "date_created": "2017/09/01"},
        "licenses": [{"id": 1, "name": "CC0 1.0 (synthetic)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": list(images),
        "annotations": list(annotations),
        "categories": [*({"id": c.coco_id, "name": c.name, "supercategory": c.supercategory} for c in classes),
                       *categories],
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def coco_annotation(ann_id: int, image_id: int, obj: SceneObject, classes: Sequence[ObjectClass]) -> dict:
    poly = obj.polygon.round(2)
    x0, y0 = poly.min(axis=0)
    x1, y1 = poly.max(axis=0)
    return {"id": ann_id, "image_id": image_id, "category_id": classes[obj.class_index].coco_id,
            "bbox": [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)],
            "area": round(polygon_area(poly), 2), "iscrowd": 0,
            "segmentation": [[float(v) for v in poly.ravel()]]}
