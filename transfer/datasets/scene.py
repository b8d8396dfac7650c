"""One synthetic image: a cluttered background with textured objects laid out on it.

Why it is built this way: detection should be learnable but not trivial, and a pretrained
backbone should help. So classes differ in form and texture but not in colour (any object
takes any hue, as in real photos, so colour statistics alone classify nothing), the
background carries distractors (lines, blobs) in any hue, and objects come at varied
scales, cut by the border (truncated) or partly hidden by later objects (occluded).

Coordinates follow COCO: pixel (i, j) covers [i, i+1) x [j, j+1). An object's mask is its
polygon rasterised by pycocotools, the same rasteriser COCO evaluation uses, so a drawn
object and its ground-truth mask agree pixel for pixel.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from mocobench.transfer.datasets import shapes
from mocobench.transfer.datasets.synth_scales import ObjectClass, Render, SceneSpec

PLACEMENT_TRIES = 30  # candidate positions per object before it is left out of the image
STRETCH = 0.25        # objects are stretched by up to exp(+-STRETCH) along each axis
BLOB_RADIUS = (0.03, 0.15)  # distractor blobs' radii, as fractions of the image's short side


@dataclass(frozen=True)
class SceneObject:
    class_index: int
    polygon: np.ndarray              # outline clipped to the image, (N, 2) float
    truncated: bool                  # the outline crosses the image border
    box: tuple[int, int, int, int]   # visible pixels' extent: x0, y0, x1, y1 (0-based, inclusive)
    visible: float                   # fraction of its in-image pixels not hidden by later objects


def image_size(rng: np.random.Generator, spec: SceneSpec) -> tuple[int, int]:
    short = int(rng.integers(spec.short_side[0], spec.short_side[1] + 1))
    long = int(round(short * rng.uniform(1.0, spec.max_aspect)))
    return (short, long) if rng.random() < spec.portrait_prob else (long, short)


def render_scene(rng: np.random.Generator, spec: SceneSpec, classes: list[ObjectClass], render: Render,
                 class_index: int | None = None) -> tuple[np.ndarray, list[SceneObject]]:
    """An RGB uint8 image and its objects (all of ``class_index`` when given)."""
    width, height = image_size(rng, spec)
    canvas = _background(rng, width, height, render)
    label = np.full((height, width), -1, dtype=np.int32)   # which object shows at each pixel
    placed: list[tuple[int, np.ndarray, bool, int]] = []   # class, polygon, truncated, pixels
    visible: list[int] = []
    count = int(rng.integers(spec.objects[0], spec.objects[1] + 1))
    for k in range(count):
        cls = class_index if class_index is not None else int(rng.integers(len(classes)))
        for _ in range(PLACEMENT_TRIES * (3 if k == 0 else 1)):
            candidate = _candidate(rng, spec, classes[cls], width, height)
            if candidate is None:
                continue
            poly, mask, truncated, geometry = candidate
            covered = np.bincount(label[mask & (label >= 0)], minlength=len(placed))
            if all(v - c >= (1 - spec.max_occlusion) * p[3] for v, c, p in zip(visible, covered, placed)):
                break
        else:
            continue
        visible = [v - c for v, c in zip(visible, covered)]
        label[mask] = len(placed)
        placed.append((cls, poly, truncated, int(mask.sum())))
        visible.append(int(mask.sum()))
        _paint(rng, canvas, mask, classes[cls], render, *geometry)
    if not placed:
        raise RuntimeError(f"no object could be placed on a {width}x{height} image; check {spec}")
    canvas += rng.normal(0.0, render.noise_std, canvas.shape).astype(np.float32)
    image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return image, [_describe(i, p, label) for i, p in enumerate(placed)]


def _describe(index: int, placed: tuple[int, np.ndarray, bool, int], label: np.ndarray) -> SceneObject:
    cls, poly, truncated, pixels = placed
    ys, xs = np.nonzero(label == index)
    return SceneObject(cls, poly, truncated, (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                       len(xs) / pixels)


def _candidate(rng: np.random.Generator, spec: SceneSpec, cls: ObjectClass, width: int, height: int):
    """A random pose for one object, or None when too little of it would be inside the image."""
    radius = min(width, height) * rng.uniform(*spec.object_scale) / 2
    truncate = rng.random() < spec.truncate_prob
    border_axis = int(rng.integers(2)) if truncate else -1
    center = [_coordinate(rng, radius, side, axis == border_axis) for axis, side in enumerate((width, height))]
    angle = rng.uniform(0, 2 * np.pi)
    stretch = tuple(np.exp(rng.uniform(-STRETCH, STRETCH, 2)))
    full = shapes.place(shapes.SHAPES[cls.shape](), tuple(center), radius, angle, stretch)
    poly = shapes.clip_to_box(full, width, height)
    if len(poly) < 3:
        return None
    mask = rasterize(poly, width, height)
    pixels = int(mask.sum())
    if pixels < 4 or pixels < spec.min_inside * shapes.polygon_area(full):
        return None
    truncated = bool((full < 0).any() or (full[:, 0] > width).any() or (full[:, 1] > height).any())
    return poly, mask, truncated, (center, radius, angle)


def _coordinate(rng: np.random.Generator, radius: float, side: int, across_border: bool) -> float:
    if across_border:  # centre near an edge, so the outline crosses it
        offset = rng.uniform(-0.3 * radius, 0.5 * radius)
        return offset if rng.random() < 0.5 else side - offset
    if 2 * radius >= side:
        return side / 2
    return rng.uniform(radius, side - radius)


def rasterize(poly: np.ndarray, width: int, height: int) -> np.ndarray:
    rle = mask_utils.merge(mask_utils.frPyObjects([poly.ravel().tolist()], height, width))
    with warnings.catch_warnings():  # pycocotools' Cython decode predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _paint(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, cls: ObjectClass,
           render: Render, center: list[float], radius: float, angle: float) -> None:
    hue = rng.random()  # any class in any colour: class is form and texture
    value = rng.uniform(*render.value)
    first = shapes.hsv_rgb(hue, rng.uniform(*render.saturation), value)
    second = shapes.hsv_rgb(hue + rng.normal(0.0, render.hue_jitter), rng.uniform(*render.saturation),
                            value * rng.uniform(*render.shade))
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    period = 2 * radius * rng.uniform(*render.texture_period)
    dx, dy = xx - center[0], yy - center[1]  # texture axes turn with the object
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / period
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / period
    t = shapes.TEXTURES[cls.texture](u, v)[..., None]
    patch = first * (1 - t) + second * t
    region = canvas[y0:y1, x0:x1]
    m = mask[y0:y1, x0:x1]
    region[m] = patch[m]


def _background(rng: np.random.Generator, width: int, height: int, render: Render) -> np.ndarray:
    """Two dull colours mixed by smooth noise, then distractor lines and blobs in any hue."""
    def dull() -> tuple[float, float, float]:
        return tuple(shapes.hsv_rgb(rng.random(), rng.uniform(*render.background_saturation),
                                    rng.uniform(*render.background_value)))

    def distractor() -> tuple[int, ...]:
        return tuple(int(c) for c in shapes.hsv_rgb(rng.random(), rng.uniform(*render.clutter_saturation),
                                                    rng.uniform(*render.clutter_value)))

    coarse = rng.random((height // 16 + 2, width // 16 + 2)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))[..., None]
    base = np.array(dull()) * (1 - field) + np.array(dull()) * field
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    kpx = width * height / 1000
    for _ in range(rng.poisson(render.lines_per_kpx * kpx)):
        pts = rng.uniform(0, 1, 4) * [width, height, width, height]
        draw.line(pts.tolist(), fill=distractor(), width=int(rng.integers(1, 4)))
    for _ in range(rng.poisson(render.blobs_per_kpx * kpx)):
        cx, cy = rng.uniform(0, 1, 2) * [width, height]
        rx, ry = rng.uniform(*BLOB_RADIUS, 2) * min(width, height)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=distractor())
    return np.asarray(image, dtype=np.float32).copy()


background = _background  # the stick-figure images (synth_people) share the scenes' backgrounds
