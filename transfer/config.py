"""Detection configs: detectron2's YAML format, merged onto detectron2's defaults tree."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from fvcore.common.config import CfgNode

from mocobench.config import (FINITE, NON_NEGATIVE, POSITIVE, PROBABILITY, ConfigError, Rule, at_least, between,
                              check_rules, each, increasing, load_config, load_defaults)

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def detection_defaults() -> CfgNode:
    """A fresh copy of detectron2's defaults tree (what get_cfg() returns in detectron2)."""
    return _defaults().clone()


COUNT = at_least(1)
# detectron2's own ranges, checked at load so a bad value is one line before any work,
# not a traceback (or a hang) once training starts
RULES: dict[str, Rule] = {
    "SOLVER.BASE_LR": POSITIVE, "SOLVER.BASE_LR_END": NON_NEGATIVE, "SOLVER.IMS_PER_BATCH": COUNT,
    "SOLVER.MAX_ITER": NON_NEGATIVE, "SOLVER.STEPS": increasing(COUNT), "SOLVER.GAMMA": POSITIVE,
    "SOLVER.MOMENTUM": between(0, 1, high_open=True), "SOLVER.WEIGHT_DECAY": NON_NEGATIVE,
    "SOLVER.WEIGHT_DECAY_NORM": NON_NEGATIVE, "SOLVER.WARMUP_FACTOR": PROBABILITY, "SOLVER.WARMUP_ITERS": NON_NEGATIVE,
    "SOLVER.CHECKPOINT_PERIOD": NON_NEGATIVE, "SOLVER.REFERENCE_WORLD_SIZE": NON_NEGATIVE,
    "SOLVER.BIAS_LR_FACTOR": POSITIVE, "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": POSITIVE,
    "DATALOADER.NUM_WORKERS": NON_NEGATIVE, "DATALOADER.REPEAT_THRESHOLD": NON_NEGATIVE,
    "INPUT.MIN_SIZE_TRAIN": each(COUNT), "INPUT.MAX_SIZE_TRAIN": COUNT, "INPUT.MIN_SIZE_TEST": NON_NEGATIVE,
    "INPUT.MAX_SIZE_TEST": COUNT, "MODEL.PIXEL_STD": each(POSITIVE, 3), "MODEL.PIXEL_MEAN": each(FINITE, 3),
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE": COUNT, "MODEL.RPN.POSITIVE_FRACTION": PROBABILITY,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN": COUNT, "MODEL.RPN.PRE_NMS_TOPK_TEST": COUNT,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN": COUNT, "MODEL.RPN.POST_NMS_TOPK_TEST": COUNT,
    "MODEL.RPN.NMS_THRESH": PROBABILITY, "MODEL.RPN.IOU_THRESHOLDS": each(PROBABILITY),
    "MODEL.RPN.LOSS_WEIGHT": NON_NEGATIVE, "MODEL.RPN.BBOX_REG_LOSS_WEIGHT": NON_NEGATIVE,
    "MODEL.RPN.SMOOTH_L1_BETA": NON_NEGATIVE,
    "MODEL.ROI_HEADS.NUM_CLASSES": COUNT, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE": COUNT,
    "MODEL.ROI_HEADS.POSITIVE_FRACTION": PROBABILITY, "MODEL.ROI_HEADS.IOU_THRESHOLDS": each(PROBABILITY),
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST": PROBABILITY, "MODEL.ROI_HEADS.NMS_THRESH_TEST": PROBABILITY,
    "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": COUNT, "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT": NON_NEGATIVE,
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA": NON_NEGATIVE, "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION": COUNT,
    "MODEL.ANCHOR_GENERATOR.SIZES": each(each(POSITIVE)), "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": each(each(POSITIVE)),
    "MODEL.BACKBONE.FREEZE_AT": between(0, 5), "MODEL.RESNETS.DEPTH": Rule(lambda v: v in (18, 34, 50, 101, 152),
                                                                          "one of 18, 34, 50, 101, 152"),
    "MODEL.RESNETS.RES5_DILATION": Rule(lambda v: v in (1, 2), "1 or 2"),
    "TEST.DETECTIONS_PER_IMAGE": COUNT, "TEST.EVAL_PERIOD": NON_NEGATIVE,
    "TEST.PRECISE_BN.NUM_ITER": COUNT, "SEED": at_least(-1),
}


def validate_detection_config(cfg: CfgNode, source: str | os.PathLike) -> None:
    """Every ranged key within its range, and a schedule whose steps fall inside its iterations."""
    check_rules(cfg, RULES, source)
    s = cfg.SOLVER
    beyond = [x for x in s.STEPS if x > s.MAX_ITER]
    if beyond:
        raise ConfigError(f"{source}: SOLVER.STEPS {list(s.STEPS)} has steps after SOLVER.MAX_ITER {s.MAX_ITER}, "
                          f"which would never apply: give SOLVER.STEPS within {s.MAX_ITER} (or '()' for none)")


def load_detection_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> CfgNode:
    """defaults <- file (with its _BASE_ chain) <- KEY VALUE overrides, strictly checked."""
    cfg = load_config(detection_defaults(), path, overrides)
    validate_detection_config(cfg, _source(path, overrides))
    return cfg


def _source(path: str | os.PathLike | None, overrides: Sequence[str]) -> str:
    """Where a config's values came from, for an error message."""
    where = [str(path)] if path else ["defaults"]
    return " + ".join(where + (["command line"] if overrides else []))


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
