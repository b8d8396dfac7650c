"""COCO's person keypoint schema: the 17 names, the skeleton, the OKS sigmas and the
left/right flip map derived from the names.

Why one module: the synthetic data, the loader's metadata and the evaluator must agree on
the same 17 points in the same order, or keypoint AP compares different joints.
"""

from __future__ import annotations

from typing import Sequence

KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# limbs as 1-based keypoint index pairs, as person_keypoints_*.json lists them
SKELETON = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)
# per-keypoint OKS falloff from the COCO keypoint evaluation (pycocotools' default)
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)


def flip_map(names: Sequence[str]) -> list[tuple[str, str]]:
    """(left_x, right_x) pairs, which a horizontal flip swaps (detectron2's keypoint_flip_map)."""
    return [(n, "right_" + n[len("left_"):]) for n in names
            if n.startswith("left_") and "right_" + n[len("left_"):] in names]
