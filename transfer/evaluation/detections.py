"""Detections in COCO results format, checked against a dataset before any metric is computed.

Both evaluators take the same list (contract 2: image_id, category_id as the dataset's own
id, bbox as XYWH, score); a detection naming an image or category the dataset does not
have is the user's mistake and must say which detection, not surface as a KeyError.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from mocobench import UserError


def detection_arrays(detections: Sequence[Mapping[str, Any]], image_index: Mapping[Hashable, int],
                     category_index: Mapping[Hashable, int], source: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image index, category index, XYWH boxes [N, 4], scores) of valid detections."""
    n = len(detections)
    images, categories = np.empty(n, np.int64), np.empty(n, np.int64)
    boxes, scores = np.empty((n, 4), np.float64), np.empty(n, np.float64)
    for i, det in enumerate(detections):
        if not isinstance(det, Mapping):
            raise UserError(f"{source}: detection {i} is not an object")
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
        if missing:
            raise UserError(f"{source}: detection {i} is missing {', '.join(missing)}")
        try:
            images[i] = image_index[det["image_id"]]
        except (KeyError, TypeError):
            raise UserError(f"{source}: detection {i} names image_id {det['image_id']!r}, "
                            f"which is not in the dataset") from None
        try:
            categories[i] = category_index[det["category_id"]]
        except (KeyError, TypeError):
            raise UserError(f"{source}: detection {i} names category_id {det['category_id']!r}, "
                            f"which is not a category of the dataset") from None
        bbox, score = det["bbox"], det["score"]
        if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                or not all(isinstance(v, Real) for v in bbox)):
            raise UserError(f"{source}: detection {i} has bbox {bbox!r}, expected [x, y, w, h]")
        if not isinstance(score, Real):
            raise UserError(f"{source}: detection {i} has score {score!r}, expected a number")
        boxes[i], scores[i] = bbox, score
    return images, categories, boxes, scores
