"""Keypoints in a COCO JSON (person_keypoints_*.json): checks, metadata and detectron2's
record convention.

Each annotation's ``keypoints`` is a flat [x, y, v] * K list over its category's K named
``keypoints``, v being 0 (not labelled), 1 (labelled, hidden) or 2 (labelled, visible), and
``num_keypoints`` counts the labelled ones; COCOeval ignores an instance whose count is 0, so
a wrong count silently changes AP and is refused. Records shift x and y by half a pixel, as
detectron2's ``load_coco_json`` does, because COCO gives keypoints as pixel indices while
boxes and masks are continuous coordinates.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from mocobench import UserError
from mocobench.transfer.datasets.person_keypoints import flip_map

VISIBILITY = (0, 1, 2)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_category(i: int, cat: dict, json_file: Path) -> int:
    """The category's keypoint count, its names and skeleton checked."""
    names, skeleton = cat.get("keypoints"), cat.get("skeleton")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise UserError(f"{json_file}: categories[{i}] has no 'keypoints' list of names (a keypoints file needs one)")
    if len(set(names)) != len(names):
        raise UserError(f"{json_file}: categories[{i}] repeats a keypoint name in {names}")
    if not (isinstance(skeleton, list) and all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(j, int) and 1 <= j <= len(names) for j in e)
            for e in skeleton)):
        raise UserError(f"{json_file}: categories[{i}] has no valid 'skeleton' (want [[i, j], ...] with "
                        f"1-based indices into its {len(names)} keypoints)")
    return len(names)


def _check_annotation(i: int, ann: dict, count: int, json_file: Path) -> None:
    kps = ann.get("keypoints")
    if not (isinstance(kps, list) and len(kps) == 3 * count):
        raise UserError(f"{json_file}: annotations[{i}] has keypoints of length "
                        f"{len(kps) if isinstance(kps, list) else kps!r}, want 3 x {count} (x, y, v per keypoint)")
    if not all(map(_finite, kps)):
        raise UserError(f"{json_file}: annotations[{i}] has a keypoint value that is not a finite number")
    flags = kps[2::3]
    if any(v not in VISIBILITY for v in flags):
        raise UserError(f"{json_file}: annotations[{i}] has a keypoint visibility not in {{0, 1, 2}}: {flags}")
    labelled = sum(v > 0 for v in flags)
    if ann.get("num_keypoints") != labelled:
        raise UserError(f"{json_file}: annotations[{i}] has num_keypoints {ann.get('num_keypoints')!r} but "
                        f"{labelled} labelled keypoints (COCOeval ignores instances by this count)")


def check_keypoints(data: dict, json_file: Path, required: bool) -> None:
    """Categories with keypoints (all of them when ``required``) and every annotation of
    theirs with a well-formed keypoint list; ``data`` passed the instances checks."""
    counts = {}
    for i, cat in enumerate(data["categories"]):
        if required or "keypoints" in cat:
            counts[cat["id"]] = _check_category(i, cat, json_file)
    for i, ann in enumerate(data["annotations"]):
        if ann["category_id"] in counts:
            _check_annotation(i, ann, counts[ann["category_id"]], json_file)
        elif "keypoints" in ann:
            raise UserError(f"{json_file}: annotations[{i}] has keypoints but its category "
                            f"{ann['category_id']!r} names none")


def keypoint_metadata(api: COCO, json_file: str) -> dict[str, Any]:
    """detectron2's keypoint metadata: names (of the one keypoint category), flip map, limbs."""
    cats = [c for c in api.cats.values() if "keypoints" in c]
    if len(cats) != 1:
        raise UserError(f"{json_file}: {len(cats)} categories have keypoints; a keypoints dataset has exactly one")
    names = list(cats[0]["keypoints"])
    return {"keypoint_names": names, "keypoint_flip_map": flip_map(names),
            "keypoint_connection_rules": [(names[a - 1], names[b - 1], (255, 255, 255))
                                          for a, b in cats[0]["skeleton"]]}


def record_keypoints(keypoints: list[float]) -> list[float]:
    """x and y + 0.5 (pixel index -> continuous coordinate), v as it is."""
    return [v + 0.5 if i % 3 != 2 else v for i, v in enumerate(keypoints)]
