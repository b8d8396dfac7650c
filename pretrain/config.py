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
from mocobench.config import load_config, load_defaults
from mocobench.resnet import ResNetShape

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def load_pretrain_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> CfgNode:
    cfg = load_config(_defaults(), path, overrides)
    _validate(cfg, str(path) if path else "defaults")
    return cfg


def _validate(cfg: CfgNode, source: str) -> None:
    if cfg.SOLVER.SCHEDULE not in ("step", "cosine"):
        raise UserError(f"{source}: SOLVER.SCHEDULE must be 'step' or 'cosine', got {cfg.SOLVER.SCHEDULE!r}")
    if cfg.TRAIN.DEVICE not in ("auto", "cpu", "cuda"):
        raise UserError(f"{source}: TRAIN.DEVICE must be auto, cpu or cuda, got {cfg.TRAIN.DEVICE!r}")
    for key in ("SOLVER.BATCH_SIZE", "SOLVER.EPOCHS", "MOCO.K", "MOCO.SPLIT_BN_GROUPS", "INPUT.CROP_SIZE"):
        section, name = key.split(".")
        if int(cfg[section][name]) < 1:
            raise UserError(f"{source}: {key} must be a positive integer, got {cfg[section][name]}")
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
    if not 0.0 <= c.BANK_MOMENTUM < 1.0:
        raise UserError(f"{source}: MOCO.BANK_MOMENTUM must be in [0, 1), got {c.BANK_MOMENTUM}")
    if not 0.0 <= c.M <= 1.0:
        raise UserError(f"{source}: MOCO.M must be in [0, 1], got {c.M}")


def resnet_shape(cfg: CfgNode) -> ResNetShape:
    m = cfg.MODEL
    return ResNetShape(depth=m.DEPTH, stem_out_channels=m.STEM_OUT_CHANNELS,
                       res2_out_channels=m.RES2_OUT_CHANNELS, width_per_group=m.WIDTH_PER_GROUP,
                       num_groups=m.NUM_GROUPS)


def scaled_lr(cfg: CfgNode) -> float:
    """Linear scaling rule: the paper's lr is quoted at a reference batch (0.03 at 256)."""
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.BATCH_SIZE / cfg.SOLVER.REFERENCE_BATCH_SIZE
