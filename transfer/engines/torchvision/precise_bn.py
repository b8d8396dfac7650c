"""Precise BN (detectron2's TEST.PRECISE_BN): after the last iteration, recompute every
trained BN's running statistics as the plain average over NUM_ITER training batches.

Then the statistics are averaged over ranks, so every rank holds the same BN (detectron2
leaves them rank-specific under plain BN).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from mocobench.transfer.engines.torchvision.norm import batch_norms


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, forward: Callable[[object], None], num_iter: int) -> int:
    """Returns the number of batches used; ``forward(batch)`` runs the model in train mode."""
    norms = batch_norms(model)
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()  # num_batches_tracked = 0; momentum None -> cumulative average
        bn.momentum = None
    used = 0
    for batch in batches:
        if used >= num_iter:
            break
        forward(batch)
        used += 1
    for bn, m in zip(norms, momenta):
        bn.momentum = m
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for bn in norms:
            for buf in (bn.running_mean, bn.running_var):
                dist.all_reduce(buf)
                buf /= dist.get_world_size()
    return used
