"""Instance masks as detectron2 keeps them, by INPUT.MASK_FORMAT.

polygon (detectron2's default): each instance stays a list of float64 polygons through
resize and flip, and a RoI's mask target is its instance's polygons shifted to the RoI's
corner, scaled so the RoI spans the target's side, and rasterised there by pycocotools.
bitmask: each instance is rasterised once at the image's size, and a RoI's target is
cropped from it with roi_align (aligned=True), then thresholded at 0.5.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pycocotools import mask as mask_util
from torch import Tensor
from torchvision.ops import roi_align

MASK_FORMATS = ("polygon", "bitmask")


class Polygons:
    """One image's instances as polygons: ``instances[i]`` is instance i's list of flat
    float64 [x0, y0, x1, y1, ...] arrays. Kept on the CPU (``to`` returns it unchanged), as
    detectron2's PolygonMasks: the targets are rasterised there anyway."""

    def __init__(self, instances: Sequence[Sequence[np.ndarray]]) -> None:
        self.instances = [[np.asarray(p, dtype=np.float64) for p in polys] for polys in instances]

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, keep: Sequence[bool]) -> Polygons:
        return Polygons([polys for polys, k in zip(self.instances, keep) if k])

    def to(self, *args: object, **kwargs: object) -> Polygons:
        return self

    def flipped(self, axis: int, size: int) -> Polygons:
        """Mirrored along x (``axis`` 0) or y (1) in an image ``size`` wide (or tall)."""
        out = []
        for polys in self.instances:
            flipped = [p.copy() for p in polys]
            for p in flipped:
                p[axis::2] = size - p[axis::2]
            out.append(flipped)
        return Polygons(out)


def rasterize(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """The union of ``polygons`` as a height x width 0/1 uint8 mask (pycocotools, as COCO's evaluation)."""
    if not polygons:
        return np.zeros((height, width), np.uint8)
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects([np.asarray(p) for p in polygons], height, width)))


def rasterize_in_box(polygons: Sequence[np.ndarray], box: np.ndarray, size: int) -> np.ndarray:
    """``polygons`` seen through ``box`` (float32 x0, y0, x1, y1) at size x size: shifted to the
    box's corner, scaled by size / the box's side (sides under 0.1 count as 0.1), rasterised."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float32)
    # float32 sides and ratios, float64 coordinates: the arithmetic detectron2 does on its proposal boxes
    ratio_w, ratio_h = size / max(x1 - x0, 0.1), size / max(y1 - y0, 0.1)
    scaled = []
    for p in polygons:
        q = np.array(p, dtype=np.float64)
        q[0::2] = (q[0::2] - x0) * ratio_w
        q[1::2] = (q[1::2] - y0) * ratio_h
        scaled.append(q)
    return rasterize(scaled, size, size)


def polygon_targets(boxes: Tensor, gt: Polygons, matched: Tensor, size: int) -> Tensor:
    """Each RoI's target from the polygons of the instance it matched (bool, N x size x size)."""
    cpu_boxes = boxes.detach().to("cpu", torch.float32).numpy()
    crops = [rasterize_in_box(gt.instances[i], box, size) for i, box in zip(matched.tolist(), cpu_boxes)]
    return torch.from_numpy(np.stack(crops)).to(boxes.device, torch.bool)


def bitmask_targets(boxes: Tensor, gt: Tensor, matched: Tensor, size: int) -> Tensor:
    """Each RoI cropped from the full-image mask of the instance it matched (bool, N x size x size)."""
    # the RoI's batch index selects its own instance's mask, so no mask is copied per RoI
    rois = torch.cat([matched[:, None].to(torch.float32), boxes.to(torch.float32)], dim=1)
    return roi_align(gt[:, None].float(), rois, (size, size), 1.0, 0, aligned=True)[:, 0] >= 0.5
