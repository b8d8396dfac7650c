"""Synthetic person-keypoint images: stick figures with COCO's 17 keypoints on the scenes'
cluttered backgrounds, and their person_keypoints annotations.

Why stick figures: keypoint R-CNN must be able to learn where each joint is, so every joint
sits at a drawn feature (the head's centre, a limb's end or bend) and the figure's left and
right differ (left limbs are drawn a shade lighter), else a flip would make them ambiguous.
Some labelled joints are hidden under a blob (v=1) and joints off the image are unlabelled
(v=0), as in COCO. Coordinates are integer pixel indices, as COCO gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from mocobench.transfer.datasets import shapes
from mocobench.transfer.datasets.person_keypoints import KEYPOINT_NAMES, SKELETON
from mocobench.transfer.datasets.scene import background, image_size
from mocobench.transfer.datasets.synth_scales import Render, SceneSpec

# a front-facing figure of height 1, centred on x = 0 with the head at the top (y down);
# the person's left is the image's right, as a camera sees someone facing it
POSE = np.array([
    (0.0, 0.07), (0.025, 0.05), (-0.025, 0.05), (0.05, 0.06), (-0.05, 0.06), (0.11, 0.18), (-0.11, 0.18),
    (0.16, 0.33), (-0.16, 0.33), (0.18, 0.47), (-0.18, 0.47), (0.07, 0.52), (-0.07, 0.52),
    (0.08, 0.73), (-0.08, 0.73), (0.09, 0.95), (-0.09, 0.95),
])
LIMB_JITTER = 0.05       # std of elbows, wrists, knees and ankles' offsets, in figure heights
MOVABLE = (7, 8, 9, 10, 13, 14, 15, 16)  # 0-based: the joints that bend
TILT = 0.25              # radians: the figure's lean is uniform in +-TILT
HIDDEN_PROB = 0.12       # chance a labelled joint is covered by a blob (v=1)
HEAD_RADIUS = 0.07       # in figure heights
CATEGORY = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(e) for e in SKELETON]}


@dataclass(frozen=True)
class Person:
    keypoints: list[int]               # x, y, v per keypoint (COCO's flat list)
    bbox: tuple[int, int, int, int]    # x, y, w, h of the drawn figure, clipped to the image


def _figure(rng: np.random.Generator, spec: SceneSpec, width: int, height: int) -> tuple[np.ndarray, float]:
    """Joint positions (17, 2) in pixels and the figure's height."""
    size = rng.uniform(*spec.object_scale) * min(width, height)
    pose = POSE.copy()
    pose[list(MOVABLE)] += rng.normal(0, LIMB_JITTER, (len(MOVABLE), 2))
    angle = rng.uniform(-TILT, TILT)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    across = rng.random() < spec.truncate_prob  # placed so that part of it may leave the image
    lo = 0.0 if across else 0.5
    centre = rng.uniform([lo * 0.4 * size, lo * size], [width - lo * 0.4 * size, height - lo * size])
    return (pose - [0, 0.5]) @ rotation.T * size + centre, size


def _draw(draw: ImageDraw.ImageDraw, joints: np.ndarray, size: float, colour: np.ndarray) -> None:
    line = max(1, int(round(size / 25)))
    lighter = tuple(int(c) for c in np.clip(colour * 1.35 + 30, 0, 255))
    for a, b in SKELETON:
        left = KEYPOINT_NAMES[a - 1].startswith("left") or KEYPOINT_NAMES[b - 1].startswith("left")
        draw.line([*joints[a - 1], *joints[b - 1]], fill=lighter if left else tuple(int(c) for c in colour),
                  width=line)
    r = HEAD_RADIUS * size
    x, y = joints[0]
    draw.ellipse([x - r, y - r, x + r, y + r], outline=tuple(int(c) for c in colour), width=line)


def _annotate(rng: np.random.Generator, joints: np.ndarray, size: float, width: int, height: int,
              draw: ImageDraw.ImageDraw) -> Person | None:
    """Keypoints with visibility (hiding some under blobs drawn now) and the box; None if none is inside."""
    pixels = np.floor(joints).astype(int)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    if not inside.any():
        return None
    keypoints: list[int] = []
    for (x, y), labelled in zip(pixels, inside):
        if not labelled:
            keypoints += [0, 0, 0]
            continue
        hidden = rng.random() < HIDDEN_PROB
        if hidden:
            r = 0.05 * size
            colour = tuple(int(c) for c in shapes.hsv_rgb(rng.random(), rng.uniform(0.1, 0.9), rng.uniform(0.2, 0.95)))
            draw.ellipse([x + 0.5 - r, y + 0.5 - r, x + 0.5 + r, y + 0.5 + r], fill=colour)
        keypoints += [int(x), int(y), 1 if hidden else 2]
    r = HEAD_RADIUS * size
    extent = np.vstack([joints, joints[0] - r, joints[0] + r])
    x0, y0 = np.floor(np.maximum(extent.min(axis=0), 0))
    x1, y1 = np.ceil(np.minimum(extent.max(axis=0), [width, height]))
    box = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
    return Person(keypoints, box)


def render_people(rng: np.random.Generator, spec: SceneSpec, render: Render) -> tuple[np.ndarray, list[Person]]:
    """An RGB uint8 image with ``spec.objects`` stick figures, and the ones with a joint inside it."""
    width, height = image_size(rng, spec)
    image = Image.fromarray(np.clip(background(rng, width, height, render), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    people = []
    for _ in range(int(rng.integers(spec.objects[0], spec.objects[1] + 1))):
        joints, size = _figure(rng, spec, width, height)
        colour = shapes.hsv_rgb(rng.random(), rng.uniform(*render.saturation), rng.uniform(*render.value))
        _draw(draw, joints, size, np.asarray(colour, dtype=np.float64) * 0.7)
        person = _annotate(rng, joints, size, width, height, draw)
        if person is not None:
            people.append(person)
    noise = rng.normal(0, render.noise_std, (height, width, 3))
    return np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8), people


def person_annotation(ann_id: int, image_id: int, person: Person) -> dict:
    """A person_keypoints annotation; its area is its box's, as no mask is drawn."""
    x, y, w, h = person.bbox
    return {"id": ann_id, "image_id": image_id, "category_id": CATEGORY["id"], "bbox": [x, y, w, h],
            "area": float(w * h), "iscrowd": 0, "keypoints": person.keypoints,
            "num_keypoints": sum(v > 0 for v in person.keypoints[2::3])}
