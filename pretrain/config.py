"""Configs of the pretrain stage: pretrain/defaults.yaml <- a config file <- KEY VALUE overrides.

All four commands (pretrain, knn, lincls, supervised) share one defaults tree so a model
shape or an input size is spelled the same way everywhere and one file can describe the
encoder a later command evaluates.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.config import (NON_NEGATIVE, POSITIVE, PROBABILITY, Rule, at_least, between, check_rules, each,
                              increasing, load_config, load_defaults)
from mocobench.resnet import ResNetShape

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def load_pretrain_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> CfgNode:
    cfg = load_config(_defaults(), path, overrides)
    _validate(cfg, str(path) if path else "defaults")
    return cfg


COUNT = at_least(1)
# ranges of every key that has one: a value outside trains nothing meaningful (T 0 divides by
# zero, a negative lr ascends) and must stop before any work, naming the key
RULES: dict[str, Rule] = {
    "SOLVER.SCHEDULE": Rule(lambda v: v in ("step", "cosine"), "'step' or 'cosine'"),
    "TRAIN.DEVICE": Rule(lambda v: v in ("auto", "cpu", "cuda"), "auto, cpu or cuda"),
    "SOLVER.BATCH_SIZE": COUNT, "SOLVER.EPOCHS": COUNT, "SOLVER.BASE_LR": POSITIVE,
    "SOLVER.REFERENCE_BATCH_SIZE": COUNT, "SOLVER.MOMENTUM": between(0, 1, high_open=True),
    "SOLVER.WEIGHT_DECAY": NON_NEGATIVE, "SOLVER.STEPS": increasing(COUNT), "SOLVER.GAMMA": POSITIVE,
    "MOCO.K": COUNT, "MOCO.DIM": COUNT, "MOCO.T": POSITIVE, "MOCO.M": PROBABILITY,
    "MOCO.BANK_MOMENTUM": between(0, 1, high_open=True), "MOCO.SPLIT_BN_GROUPS": COUNT,
    "MODEL.RESIDUAL_BN_GAMMA": NON_NEGATIVE,
    "AUG.CROP_SCALE": Rule(lambda v: each(between(0, 1), 2).test(v) and 0 < v[0] <= v[1],
                           "2 values 0 < min <= max <= 1"),
    "AUG.COLOR_JITTER": Rule(lambda v: each(NON_NEGATIVE, 4).test(v) and v[3] <= 0.5,
                             "4 values >= 0 (brightness, contrast, saturation, hue <= 0.5)"),
    "AUG.COLOR_JITTER_P": PROBABILITY, "AUG.GRAYSCALE_P": PROBABILITY, "AUG.BLUR_P": PROBABILITY,
    "AUG.FLIP_P": PROBABILITY,
    "AUG.BLUR_SIGMA": Rule(lambda v: each(POSITIVE, 2).test(v) and v[0] <= v[1], "2 values 0 < min <= max"),
    "INPUT.CROP_SIZE": COUNT, "INPUT.RESIZE_SIZE": COUNT, "INPUT.PIXEL_MEAN": each(PROBABILITY, 3),
    "INPUT.PIXEL_STD": each(POSITIVE, 3), "DATA.NUM_WORKERS": NON_NEGATIVE,
    "TRAIN.LOG_PERIOD": COUNT, "CHECKPOINT.PERIOD_EPOCHS": COUNT, "CHECKPOINT.PERIOD_ITERS": NON_NEGATIVE,
    "KNN.PERIOD_EPOCHS": NON_NEGATIVE, "KNN.K": each(COUNT), "KNN.T": POSITIVE,
}


def _validate(cfg: CfgNode, source: str) -> None:
    check_rules(cfg, RULES, source)
    try:
        resnet_shape(cfg).validate()
    except ValueError as e:
        raise UserError(f"{source}: MODEL: {e}") from None


MECHANISMS = ("moco", "end_to_end", "memory_bank")


def validate_mechanism(cfg: CfgNode, source: str | os.PathLike) -> None:
    """The dictionary constraints of pretraining (not of the other commands sharing this tree)."""
    c, batch = cfg.MOCO, cfg.SOLVER.BATCH_SIZE
    if c.MECHANISM not in MECHANISMS:
        raise UserError(f"{source}: MOCO.MECHANISM must be one of {', '.join(MECHANISMS)}, got {c.MECHANISM!r}")
    if c.MECHANISM == "moco" and c.K % batch:
        raise UserError(f"{source}: MOCO.K {c.K} is not divisible by the global batch SOLVER.BATCH_SIZE {batch}: "
                        "the queue is replaced a whole batch at a time")
    if c.MECHANISM == "end_to_end" and c.K != batch:
        raise UserError(f"{source}: MOCO.K {c.K} must equal SOLVER.BATCH_SIZE {batch} with MOCO.MECHANISM "
                        "end_to_end (its dictionary is the current batch)")


def resnet_shape(cfg: CfgNode) -> ResNetShape:
    m = cfg.MODEL
    return ResNetShape(depth=m.DEPTH, stem_out_channels=m.STEM_OUT_CHANNELS,
                       res2_out_channels=m.RES2_OUT_CHANNELS, width_per_group=m.WIDTH_PER_GROUP,
                       num_groups=m.NUM_GROUPS)


def scaled_lr(cfg: CfgNode) -> float:
    """Linear scaling rule: the paper's lr is quoted at a reference batch (0.03 at 256)."""
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.BATCH_SIZE / cfg.SOLVER.REFERENCE_BATCH_SIZE
