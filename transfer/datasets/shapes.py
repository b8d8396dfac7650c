"""The object classes' outlines and textures, as pure functions of numbers.

Every shape is a polygon (round ones as many-vertex polygons, a ring as one "keyhole"
polygon: outer circle, a zero-width cut, inner circle backwards). The same polygon is
rasterised to paint the object and written as its COCO segmentation, so a mask is the
exact outline of what was drawn, not an approximation of it.
"""

from __future__ import annotations

import colorsys
from typing import Callable

import numpy as np

CIRCLE_VERTICES = 48  # enough that a 100 px circle's polygon is within half a pixel of round


def _regular(n: int, phase: float = -np.pi / 2, radius: float = 1.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def star() -> np.ndarray:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return _regular(10) * radii[:, None]


def triangle() -> np.ndarray:
    return _regular(3)


def hexagon() -> np.ndarray:
    return _regular(6, phase=0.0)


def ring() -> np.ndarray:
    outer = _arc(0, 0, 1.0, 0, 2 * np.pi, CIRCLE_VERTICES + 1)
    inner = _arc(0, 0, 0.55, 2 * np.pi, 0, CIRCLE_VERTICES + 1)
    return np.concatenate([outer, inner])


def cross() -> np.ndarray:
    a = 0.33  # half the arm width
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a],
                     [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]])


def crescent() -> np.ndarray:
    """The unit disc minus a disc of radius r centred at (d, 0): outer arc, then inner arc back."""
    d, r = 0.45, 0.85
    x = (1 - r * r + d * d) / (2 * d)
    y = np.sqrt(1 - x * x)
    a_outer = np.arctan2(y, x)
    a_inner = np.arctan2(y, x - d)
    n = CIRCLE_VERTICES // 2
    outer = _arc(0, 0, 1.0, a_outer, 2 * np.pi - a_outer, n)
    inner = _arc(d, 0, r, 2 * np.pi - a_inner, a_inner, n)[1:-1]
    return np.concatenate([outer, inner])


def arrow() -> np.ndarray:
    return np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25], [-1, 0.25]])


def diamond() -> np.ndarray:
    return np.array([[0, -1], [0.6, 0], [0, 1], [-0.6, 0]], dtype=float)


SHAPES: dict[str, Callable[[], np.ndarray]] = {
    f.__name__: f for f in (star, triangle, hexagon, ring, cross, crescent, arrow, diamond)
}


def place(unit: np.ndarray, center: tuple[float, float], radius: float, angle: float,
          stretch: tuple[float, float]) -> np.ndarray:
    """Scale, stretch, rotate and move a unit outline into image coordinates."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, s], [-s, c]])
    return (unit * np.asarray(stretch)) @ rot * radius + np.asarray(center)


# Textures: pattern value in [0, 1] (0 = first colour, 1 = second) at object-aligned
# coordinates (u, v) measured in texture periods.
def stripes(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.floor(u) % 2).astype(np.float32)


def dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du, dv = u % 1 - 0.5, v % 1 - 0.5
    return (du * du + dv * dv < 0.09).astype(np.float32)


def checks(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)


def waves(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.sin(2 * np.pi * u + 1.5 * np.sin(np.pi * v)) > 0).astype(np.float32)


def gradient(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + u / 6, 0.0, 1.0).astype(np.float32)


def rings(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Concentric bands around the object's centre."""
    return (np.floor(np.hypot(u, v) + 0.5) % 2).astype(np.float32)


TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    f.__name__: f for f in (stripes, dots, checks, waves, gradient, rings)
}


def hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """An RGB colour on the 0-255 scale."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area (what COCO's ``area`` holds for polygon annotations)."""
    x, y = poly[:, 0], poly[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def clip_to_box(poly: np.ndarray, width: float, height: float) -> np.ndarray:
    """Sutherland-Hodgman clipping to [0, width] x [0, height]: a truncated object's outline."""
    out = poly
    for axis, bound, keep_below in ((0, 0.0, False), (0, width, True), (1, 0.0, False), (1, height, True)):
        if len(out) == 0:
            break
        inside = out[:, axis] <= bound if keep_below else out[:, axis] >= bound
        nxt = np.roll(out, -1, axis=0)
        nxt_inside = np.roll(inside, -1)
        pts = []
        for p, q, pin, qin in zip(out, nxt, inside, nxt_inside):
            if pin:
                pts.append(p)
            if pin != qin:
                t = (bound - p[axis]) / (q[axis] - p[axis])
                pts.append(p + t * (q - p))
        out = np.array(pts).reshape(-1, 2)
    return out
