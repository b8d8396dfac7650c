"""Detection configs: detectron2's YAML format, merged onto detectron2's defaults tree."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from fvcore.common.config import CfgNode

from mocobench.config import load_config, load_defaults

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def detection_defaults() -> CfgNode:
    """A fresh copy of detectron2's defaults tree (what get_cfg() returns in detectron2)."""
    return _defaults().clone()


def load_detection_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> CfgNode:
    """defaults <- file (with its _BASE_ chain) <- KEY VALUE overrides, strictly checked."""
    return load_config(detection_defaults(), path, overrides)


def scaled_schedule(cfg: CfgNode, reference: int, world_size: int) -> dict[str, Any]:
    """KEY -> value running a schedule written for ``reference`` processes on ``world_size``
    (empty when no scaling applies): detectron2's REFERENCE_WORLD_SIZE rule (linear scaling).

    Images per batch and learning rate scale with the number of workers, iteration counts
    inversely, so each image is seen as often with the same per-GPU batch.
    REFERENCE_WORLD_SIZE becomes the new size, so a config scaled once is not scaled again.
    """
    if not reference or reference == world_size:
        return {}
    s = cfg.SOLVER
    scale = world_size / reference
    batch = s.IMS_PER_BATCH * scale
    if abs(batch - round(batch)) > 1e-6:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {s.IMS_PER_BATCH} x {world_size}/{reference} processes "
                         "is not a whole batch")

    def iters(n: int) -> int:
        return int(round(n / scale))

    return {"SOLVER.IMS_PER_BATCH": int(round(batch)), "SOLVER.BASE_LR": s.BASE_LR * scale,
            "SOLVER.MAX_ITER": iters(s.MAX_ITER), "SOLVER.STEPS": tuple(iters(x) for x in s.STEPS),
            "SOLVER.WARMUP_ITERS": iters(s.WARMUP_ITERS), "SOLVER.CHECKPOINT_PERIOD": iters(s.CHECKPOINT_PERIOD),
            "TEST.EVAL_PERIOD": iters(cfg.TEST.EVAL_PERIOD), "SOLVER.REFERENCE_WORLD_SIZE": world_size}
