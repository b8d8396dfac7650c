"""Synthetic Cityscapes (instance segmentation): frames in the real folder layout
(``cityscapes/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and beside them
in ``gtFine/`` the ``_gtFine_polygons.json``, ``_gtFine_labelIds.png``, ``_gtFine_instanceIds.png`` and the
``_gtFine_labelTrainIds.png`` cityscapesscripts' createTrainIdLabelImgs.py adds for semantic segmentation),
written on request (``data synth --cityscapes``).

Why these parts: detectron2's loader reads the polygons json, in which later objects lie on top
of earlier ones and each instance loses what lies above it (stuff included), so each frame has
the json's conventions: stuff polygons first (road, sky), the objects, sometimes a pole drawn
across them (cutting some in two), some objects labelled as a crowd (``<class>group``), a
license plate (label id -1, skipped by readers) and sometimes a ``deleted`` object. The
evaluation (cityscapesscripts) reads the instanceIds PNG: a pixel is label id x 1000 + the
instance's index among its class's instances, or the label id alone for stuff and crowds,
rasterised from the polygons in order, as cityscapesscripts' json2instanceImg does.

The objects are the scenes' shapes (transfer/datasets/scene.py), the synthetic classes standing
for Cityscapes' instance classes in order (star -> person, triangle -> rider, ...), since the
evaluation knows classes by their Cityscapes names. Sizes follow the scale's scene (short side
and aspect up to 2:1), not Cityscapes' fixed 2048 x 1024.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mocobench.transfer.datasets.scene import render_scene
from mocobench.transfer.datasets.synth_scales import ObjectClass, Render, SceneSpec

VERSION = 2  # bump when the same seed would give different frames (2: labelTrainIds added)
# Cityscapes' label ids of the labels used (cityscapesscripts.helpers.labels); the instance
# classes in the order detectron2's thing_classes lists them
THINGS = {"person": 24, "rider": 25, "car": 26, "truck": 27, "bus": 28, "train": 31, "motorcycle": 32,
          "bicycle": 33}
STUFF = {"road": 7, "sky": 23, "pole": 17}
# label id -> train id of the labels drawn (cityscapesscripts' table; every other id is 255, ignored)
TRAIN_IDS = {7: 0, 17: 5, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
PLATE = "license plate"     # label id -1: not drawn into the PNGs, skipped by readers
CITIES = {"train": ("aachen", "bremen", "zurich"), "val": ("frankfurt", "lindau", "munster")}
FRAME = 19                  # the annotated frame of each Cityscapes sequence
POLE_PROB = 0.5             # a pole across the frame, in front of the objects
GROUP_PROB = 0.15           # an object labelled as a crowd of its class
DELETED_PROB = 0.2          # a frame with a deleted (to be ignored) object


def frame_name(split: str, j: int) -> tuple[str, str]:
    """(city, file stem without the type suffix) of image j of a split."""
    cities = CITIES[split]
    city = cities[j % len(cities)]
    return city, f"{city}_{j // len(cities):06d}_{FRAME:06d}"


def _points(polygon: np.ndarray) -> list[list[int]]:
    """Integer pixel vertices without consecutive repeats, as Cityscapes' json gives them."""
    pts = [[int(x), int(y)] for x, y in np.round(polygon)]
    return [p for i, p in enumerate(pts) if p != pts[i - 1]] or pts[:1]


def render_frame(rng: np.random.Generator, spec: SceneSpec, classes: list[ObjectClass], render: Render
                 ) -> tuple[np.ndarray, dict]:
    """An RGB image and its polygons document (imgHeight, imgWidth, objects in drawing order)."""
    image, objects = render_scene(rng, spec, classes, render)
    height, width = image.shape[:2]
    things = list(THINGS)
    doc_objects = [{"label": "sky", "polygon": [[0, 0], [width - 1, 0], [width - 1, height // 4], [0, height // 4]]},
                   {"label": "road", "polygon": [[0, 2 * height // 3], [width - 1, 2 * height // 3],
                                                 [width - 1, height - 1], [0, height - 1]]}]
    for obj in objects:
        label = things[obj.class_index] + ("group" if rng.random() < GROUP_PROB else "")
        points = _points(obj.polygon)
        if len(points) >= 3:
            doc_objects.append({"label": label, "polygon": points})
    if rng.random() < POLE_PROB:
        x = int(rng.integers(width // 8, width - width // 8))
        half = max(1, width // 40)
        image = image.copy()
        image[:, x - half:x + half + 1] = (110, 110, 110)  # drawn over the objects, as the json says
        doc_objects.append({"label": "pole", "polygon": [[x - half, 0], [x + half, 0], [x + half, height - 1],
                                                         [x - half, height - 1]]})
    px, py = int(rng.integers(0, width - 4)), int(rng.integers(0, height - 3))
    doc_objects.append({"label": PLATE, "polygon": [[px, py], [px + 3, py], [px + 3, py + 2], [px, py + 2]]})
    if rng.random() < DELETED_PROB:
        doc_objects.append({"label": "car", "deleted": 1, "polygon": [[0, 0], [width // 2, 0], [0, height // 2]]})
    return image, {"imgHeight": int(height), "imgWidth": int(width), "objects": doc_objects}


def label_images(doc: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labelIds uint8, instanceIds uint16) rasterised from the document's polygons in order."""
    size = (doc["imgWidth"], doc["imgHeight"])
    labels, instances = Image.new("I", size, 0), Image.new("I", size, 0)
    draw_labels, draw_instances = ImageDraw.Draw(labels), ImageDraw.Draw(instances)
    counts: dict[str, int] = {}
    for obj in doc["objects"]:
        name = obj["label"]
        base = name[: -len("group")] if name.endswith("group") else name
        if obj.get("deleted") or base == PLATE:
            continue
        label_id = THINGS.get(base, STUFF.get(base))
        value = label_id
        if base in THINGS and not name.endswith("group"):
            value = label_id * 1000 + counts.get(base, 0)
            counts[base] = counts.get(base, 0) + 1
        polygon = [tuple(p) for p in obj["polygon"]]
        draw_labels.polygon(polygon, fill=label_id)
        draw_instances.polygon(polygon, fill=value)
    return np.asarray(labels, dtype=np.uint8), np.asarray(instances, dtype=np.uint16)


def train_ids(label_ids: np.ndarray) -> np.ndarray:
    """labelIds -> labelTrainIds (uint8, 255 for labels not evaluated), as createTrainIdLabelImgs.py maps them."""
    table = np.full(256, 255, np.uint8)
    for label_id, train_id in TRAIN_IDS.items():
        table[label_id] = train_id
    return table[label_ids]


def write_frame(root: Path, split: str, j: int, image: np.ndarray, doc: dict) -> int:
    """Writes the frame's five files under ``root`` (the data root's cityscapes/); returns its instances."""
    city, stem = frame_name(split, j)
    image_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True, exist_ok=True)
    gt_dir.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_dir / f"{stem}_leftImg8bit.png")
    label_ids, instance_ids = label_images(doc)
    Image.fromarray(label_ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")
    Image.fromarray(instance_ids).save(gt_dir / f"{stem}_gtFine_instanceIds.png")
    Image.fromarray(train_ids(label_ids)).save(gt_dir / f"{stem}_gtFine_labelTrainIds.png")
    (gt_dir / f"{stem}_gtFine_polygons.json").write_text(json.dumps(doc, indent="\t") + "\n")
    return int((np.unique(instance_ids) >= 1000).sum())
