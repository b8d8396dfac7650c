"""detectron2's solver: SGD with per-group weight decay, WarmupMultiStepLR, and the
REFERENCE_WORLD_SIZE rule that rescales a schedule written for another number of GPUs."""

from __future__ import annotations

import bisect

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.transfer.config import scaled_schedule

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
              nn.LayerNorm, nn.LocalResponseNorm)


def auto_scale_workers(cfg: CfgNode, world_size: int) -> dict:
    """detectron2's DefaultTrainer.auto_scale_workers, in place; returns what changed."""
    try:
        new = scaled_schedule(cfg, cfg.SOLVER.REFERENCE_WORLD_SIZE, world_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    if not new:
        return {}
    before = {key.split(".")[1]: cfg[key.split(".")[0]][key.split(".")[1]] for key in new}
    cfg.merge_from_list([x for kv in new.items() for x in kv])
    return {"reference_world_size": before.pop("REFERENCE_WORLD_SIZE"), "world_size": world_size, "before": before}


def param_hyperparams(cfg: CfgNode, module: nn.Module, name: str) -> tuple[float, float]:
    """(lr, weight decay) of one parameter, as detectron2's get_default_optimizer_params: norm
    layers take WEIGHT_DECAY_NORM, then every bias (norm biases included) BASE_LR *
    BIAS_LR_FACTOR and, when set, WEIGHT_DECAY_BIAS."""
    s = cfg.SOLVER
    lr, wd = s.BASE_LR, s.WEIGHT_DECAY
    if isinstance(module, NORM_TYPES):
        wd = s.WEIGHT_DECAY_NORM
    if name == "bias":
        lr = s.BASE_LR * s.BIAS_LR_FACTOR
        if s.WEIGHT_DECAY_BIAS is not None:
            wd = s.WEIGHT_DECAY_BIAS
    return lr, wd


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.SGD:
    """SGD over the trainable parameters, grouped by param_hyperparams."""
    s = cfg.SOLVER
    if s.CLIP_GRADIENTS.ENABLED:
        raise UserError("SOLVER.CLIP_GRADIENTS.ENABLED: gradient clipping is not implemented")
    groups: dict[tuple[float, float], list] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            groups.setdefault(param_hyperparams(cfg, module, name), []).append(p)
    params = [{"params": ps, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.SGD(params, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV)


def lr_factor(cfg: CfgNode, iteration: int) -> float:
    """WarmupMultiStepLR: warmup (linear or constant) times GAMMA ** (steps passed)."""
    s = cfg.SOLVER
    if s.LR_SCHEDULER_NAME != "WarmupMultiStepLR":
        raise UserError(f"SOLVER.LR_SCHEDULER_NAME {s.LR_SCHEDULER_NAME!r}: only WarmupMultiStepLR is implemented")
    warm = 1.0
    if iteration < s.WARMUP_ITERS:
        if s.WARMUP_METHOD == "linear":
            alpha = iteration / s.WARMUP_ITERS
            warm = s.WARMUP_FACTOR * (1 - alpha) + alpha
        elif s.WARMUP_METHOD == "constant":
            warm = s.WARMUP_FACTOR
        else:
            raise UserError(f"SOLVER.WARMUP_METHOD {s.WARMUP_METHOD!r}: use linear or constant")
    return warm * s.GAMMA ** bisect.bisect_right(sorted(s.STEPS), iteration)


def set_lr(optimizer: torch.optim.Optimizer, cfg: CfgNode, iteration: int) -> float:
    """Set every group's lr for ``iteration``; a pure function of it, so resuming needs no state."""
    factor = lr_factor(cfg, iteration)
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
    return cfg.SOLVER.BASE_LR * factor
