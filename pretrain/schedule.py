"""Learning rate per epoch, as main_moco.py / main_lincls.py set it: constant within an
epoch, stepped by GAMMA at SOLVER.STEPS or half-cosine over SOLVER.EPOCHS."""

from __future__ import annotations

import math

from fvcore.common.config import CfgNode

from mocobench.pretrain.config import scaled_lr


def learning_rate(cfg: CfgNode, epoch: int) -> float:
    lr = scaled_lr(cfg)
    if cfg.SOLVER.SCHEDULE == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.SOLVER.EPOCHS))
    return lr * cfg.SOLVER.GAMMA ** sum(epoch >= step for step in cfg.SOLVER.STEPS)
