"""Precise BN (detectron2's TEST.PRECISE_BN): recompute every trained BN's running statistics
over NUM_ITER training batches, as detectron2 does (fvcore's population estimate): the mean
and variance of all the values those batches bring to the layer, pooled, each value
weighted once and the variance without Bessel's correction.

Then the statistics are pooled over ranks, so every rank holds the same BN (detectron2
leaves them rank-specific under plain BN).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.distributed as dist
import torch.nn as nn

from mocobench.transfer.engines.torchvision.norm import batch_norms


class PooledStats:
    """One layer's running pool: value count, mean, and mean of squares."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        self.count = 0
        self.mean = torch.zeros_like(bn.running_mean)
        self.square = torch.zeros_like(bn.running_var)

    def add(self, bn: nn.modules.batchnorm._BatchNorm, n: int) -> None:
        """The layer's running statistics hold one batch's (momentum 1): fold them in."""
        self.count += n
        square = bn.running_mean ** 2 + bn.running_var * ((n - 1) / n)  # undo Bessel's correction
        self.mean += (bn.running_mean - self.mean) * (n / self.count)
        self.square += (square - self.square) * (n / self.count)

    def pool_ranks(self) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.cat([self.mean * self.count, self.square * self.count,
                           torch.tensor([float(self.count)], device=self.mean.device, dtype=self.mean.dtype)])
            dist.all_reduce(t)
            self.count = float(t[-1])
            self.mean, self.square = (t[:-1] / max(self.count, 1.0)).split(len(self.mean))


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, forward: Callable[[object], None], num_iter: int) -> int:
    """Returns the number of batches used; ``forward(batch)`` runs the model in train mode."""
    norms = batch_norms(model)
    if not norms:
        return 0
    momenta = [bn.momentum for bn in norms]
    stats = [PooledStats(bn) for bn in norms]
    sizes: dict[int, int] = {}

    def record_size(module: nn.Module, inputs: tuple) -> None:
        sizes[id(module)] = inputs[0].numel() // inputs[0].shape[1]  # every position counts as a value

    hooks = [bn.register_forward_pre_hook(record_size) for bn in norms]
    for bn in norms:
        bn.momentum = 1.0
    used = 0
    for batch in batches:
        if used >= num_iter:
            break
        sizes.clear()
        forward(batch)
        for bn, s in zip(norms, stats):
            if id(bn) in sizes:  # a layer this batch did not reach keeps out of the pool
                s.add(bn, sizes[id(bn)])
        used += 1
    for hook in hooks:
        hook.remove()
    for bn, s, m in zip(norms, stats, momenta):
        s.pool_ranks()
        bn.running_mean.copy_(s.mean)
        bn.running_var.copy_(s.square - s.mean ** 2)
        bn.momentum = m
    return used
