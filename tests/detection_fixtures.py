"""Small real VOC and COCO trees written into a test's tmp_path (XML, JSON, tiny JPEGs)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from PIL import Image

# (name, xmin, ymin, xmax, ymax, difficult) in the devkit's 1-based inclusive pixels
VocObject = tuple[str, float, float, float, float, int]


def voc_xml(width: int, height: int, objects: Sequence[VocObject]) -> str:
    parts = [f"<annotation><folder>VOC</folder><size><width>{width}</width>"
             f"<height>{height}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "\n".join(parts) + "\n</annotation>\n"


def write_voc(root: Path, year: int, split: str,
              images: dict[str, tuple[int, int, Sequence[VocObject]]],
              classes: Sequence[str] | None = None) -> Path:
    """VOC<year> under root with one split; classes.txt only when classes is given."""
    d = root / f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    for image_id, (w, h, objects) in images.items():
        (d / "Annotations" / f"{image_id}.xml").write_text(voc_xml(w, h, objects))
        Image.new("RGB", (w, h), (90, 120, 150)).save(d / "JPEGImages" / f"{image_id}.jpg")
    (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    if classes is not None:
        (d / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return d


def random_voc(root: Path, year: int, split: str, classes: Sequence[str], n_images: int = 30,
               seed: int = 0) -> Path:
    """Integer 1-based boxes, several per image, about one in six difficult."""
    rng = random.Random(seed)
    images = {}
    for k in range(n_images):
        w, h = rng.randint(120, 220), rng.randint(120, 220)
        objects = []
        for _ in range(rng.randint(1, 5)):
            x0, y0 = rng.randint(1, w - 30), rng.randint(1, h - 30)
            objects.append((rng.choice(classes), x0, y0, rng.randint(x0 + 5, w), rng.randint(y0 + 5, h),
                            int(rng.random() < 0.17)))
        images[f"{year}_{k:06d}"] = (w, h, objects)
    return write_voc(root, year, split, images, classes)


def write_coco(root: Path, split: str, data: dict) -> Path:
    """coco/<split>/ images (sized from data["images"]) and coco/annotations/instances_<split>.json."""
    (root / "coco" / split).mkdir(parents=True, exist_ok=True)
    for img in data.get("images", []):
        Image.new("RGB", (img["width"], img["height"]), (10, 200, 30)).save(root / "coco" / split / img["file_name"])
    path = root / "coco" / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def same_records_but_boxes(ours: list[dict], theirs: list[dict]) -> list[tuple[dict, dict]]:
    """Asserts our records equal detectron2's (record by record, annotation by annotation) but for the
    boxes (bbox, detectron2's bbox_mode); returns the (ours, theirs) annotation pairs for the box check."""
    assert len(ours) == len(theirs) and sum(len(r["annotations"]) for r in ours) > 0
    pairs = []
    for mine, ref in zip(ours, theirs):
        assert {k: v for k, v in mine.items() if k != "annotations"} == {
            k: v for k, v in ref.items() if k != "annotations"}
        assert len(mine["annotations"]) == len(ref["annotations"])
        for a, b in zip(mine["annotations"], ref["annotations"]):
            assert {k: v for k, v in a.items() if k != "bbox"} == {
                k: v for k, v in b.items() if k not in ("bbox", "bbox_mode")}
            pairs.append((a, b))
    return pairs
