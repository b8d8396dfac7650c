"""Detections in COCO results format, checked against a dataset before any metric is computed.

Both evaluators take the same list (docs/DESIGN.md, "Detections file": image_id, category_id as the dataset's own
id, bbox as XYWH, score); a detection naming an image or category the dataset does not
have is the user's mistake and must say which detection, not surface as a KeyError.
A whole VOC test set has ~10^5-10^6 detections, so the common case (plain Python numbers
from JSON) is checked with cheap type tests and only a suspect detection gets the
thorough check that explains it.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from mocobench import UserError

PLAIN_NUMBERS = frozenset({int, float})


def _explain(i: int, det: Any, image_index: Mapping[Hashable, int],
             category_index: Mapping[Hashable, int], source: str) -> None:
    """Raise the UserError that says what is wrong with detection i; return if it is valid."""
    if not isinstance(det, Mapping):
        raise UserError(f"{source}: detection {i} is not an object")
    missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in det]
    if missing:
        raise UserError(f"{source}: detection {i} is missing {', '.join(missing)}")
    try:
        image_index[det["image_id"]]
    except (KeyError, TypeError):
        raise UserError(f"{source}: detection {i} names image_id {det['image_id']!r}, "
                        f"which is not in the dataset") from None
    try:
        category_index[det["category_id"]]
    except (KeyError, TypeError):
        raise UserError(f"{source}: detection {i} names category_id {det['category_id']!r}, "
                        f"which is not a category of the dataset") from None
    bbox, score = det["bbox"], det["score"]
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, Real) and not isinstance(v, bool) for v in bbox)):
        raise UserError(f"{source}: detection {i} has bbox {bbox!r}, expected [x, y, w, h]")
    if not isinstance(score, Real) or isinstance(score, bool):
        raise UserError(f"{source}: detection {i} has score {score!r}, expected a number")


def _check_values(table: np.ndarray, detections: Sequence[Mapping[str, Any]], source: str) -> None:
    """A NaN or infinite score or coordinate, or a box of negative size, would be ranked and
    matched as if it meant something; name the first such detection instead (one vector pass)."""
    bad = ~np.isfinite(table[:, 2:]).all(axis=1) | (table[:, 5] < 0) | (table[:, 6] < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        det = detections[i]
        what = ("a box of negative size" if np.isfinite(table[i, 2:]).all()
                else "a non-finite score or coordinate")
        raise UserError(f"{source}: detection {i} has {what}: bbox {det['bbox']!r}, score {det['score']!r}")


def detection_arrays(detections: Sequence[Mapping[str, Any]], image_index: Mapping[Hashable, int],
                     category_index: Mapping[Hashable, int], source: str
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image index, category index, XYWH boxes [N, 4], scores) of valid detections."""
    rows = []
    for i, det in enumerate(detections):
        try:
            row = (image_index[det["image_id"]], category_index[det["category_id"]], det["score"], *det["bbox"])
        except Exception:
            _explain(i, det, image_index, category_index, source)
            raise UserError(f"{source}: detection {i} is not valid: {det!r}") from None
        if len(row) != 7 or not PLAIN_NUMBERS.issuperset(map(type, row[2:])):
            _explain(i, det, image_index, category_index, source)  # numpy numbers pass
        rows.append(row)
    table = np.array(rows, dtype=np.float64).reshape(-1, 7)
    _check_values(table, detections, source)
    return table[:, 0].astype(np.int64), table[:, 1].astype(np.int64), table[:, 3:7], table[:, 2]
