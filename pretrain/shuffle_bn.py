"""Shuffling BN: keep BatchNorm from leaking which key belongs to which query.

Why: with per-device BN, the queries and their positive keys of one device share batch
statistics, and the encoder can "cheat" the pretext task through them instead of learning
features (MoCo paper, Sec. 3.3). So the key encoder sees a batch shuffled across all
processes: keys are gathered, permuted by one permutation drawn on rank 0 and broadcast,
each rank encodes its slice, and the result is unshuffled back to the original order.

In one process there is nothing to shuffle across, so the multi-device setting is
emulated, as the MoCo authors' one-GPU demo does: every BN layer is a ``SplitBatchNorm``
that normalises ``groups`` sub-batches with their own statistics (as if each were on its
own device), and the key batch is permuted within the process before entering the key
encoder, so a key rarely sits in the same sub-batch as its query.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from mocobench import dist as mdist


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are computed per sub-batch.

    Samples ``i`` with the same ``i % groups`` form a sub-batch. Parameters and buffers
    keep BatchNorm2d's names and shapes, so checkpoints stay in torchvision layout; the
    running statistics are the mean of the sub-batches' updates.
    """

    def __init__(self, num_features: int, groups: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.groups == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        g = self.groups
        if n % g:
            raise ValueError(f"batch of {n} does not split into {g} BN groups")
        self.num_batches_tracked.add_(1)
        mean, var = self.running_mean.repeat(g), self.running_var.repeat(g)
        out = F.batch_norm(x.reshape(n // g, c * g, h, w), mean, var, self.weight.repeat(g),
                           self.bias.repeat(g), True, self.momentum if self.momentum is not None else 0.1,
                           self.eps)
        with torch.no_grad():
            self.running_mean.copy_(mean.view(g, c).mean(0))
            self.running_var.copy_(var.view(g, c).mean(0))
        return out.reshape(n, c, h, w)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", groups={self.groups}"


@torch.no_grad()
def gather_batches(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's batch (rank order); the identity in one process."""
    if not mdist.is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(mdist.world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward hands each rank the gradient of its own rows, summed over
    the ranks that used them (the end-to-end keys are negatives on every rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.rows = x.shape[0]
        return gather_batches(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[mdist.rank() * ctx.rows:(mdist.rank() + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``gather_batches`` that gradients flow back through; the identity in one process."""
    return _GatherWithGrad.apply(x) if mdist.is_distributed() else x


@torch.no_grad()
def shuffle_batch(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """This rank's slice of the globally permuted batch, and the function that undoes it.

    The undo function takes this rank's encoded slice and returns the encodings of this
    rank's original samples, in their original order; gradients flow back through it
    (end-to-end keys are encoded with gradients).
    """
    world, rank = mdist.world_size(), mdist.rank()
    gathered = gather_batches(x)
    n = gathered.shape[0]
    perm = torch.randperm(n) if rank == 0 else torch.empty(n, dtype=torch.long)
    perm = perm.to(x.device)
    if world > 1:
        dist.broadcast(perm, src=0)
    restore = torch.argsort(perm)
    per_rank = n // world

    def unshuffle(y: torch.Tensor) -> torch.Tensor:
        return gather_with_grad(y)[restore.view(world, per_rank)[rank]]

    return gathered[perm.view(world, per_rank)[rank]], unshuffle
