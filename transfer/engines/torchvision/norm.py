"""Normalisation layers by detectron2's names (MODEL.RESNETS.NORM, FPN.NORM, ...).

``SyncBN`` and ``naiveSyncBN`` share one implementation on torch.distributed.nn's
differentiable all_reduce, because torch.nn.SyncBatchNorm refuses CPU modules (gloo runs)
and detectron2's naive variant has no torch counterpart. In one process both are plain BN.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torchvision.ops.misc import FrozenBatchNorm2d

from mocobench import UserError

NORMS = ("", "BN", "SyncBN", "naiveSyncBN", "FrozenBN", "GN")


class SyncBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose batch statistics span all ranks.

    ``naive=False`` (SyncBN): exact global mean/var, every sample weighted equally, running
    var unbiased as torch.nn.SyncBatchNorm keeps it. ``naive=True`` (naiveSyncBN): the mean
    of per-rank statistics, running var biased, as detectron2's NaiveSyncBatchNorm.
    ``momentum=None`` gives the cumulative average precise BN relies on.
    """

    def __init__(self, num_features: int, naive: bool = False, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.naive = naive

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_available() or not dist.is_initialized() \
                or dist.get_world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        xf = x.float()
        count = xf.numel() / channels
        mean = xf.mean(dim=(0, 2, 3))
        meansq = (xf * xf).mean(dim=(0, 2, 3))
        if self.naive:
            stats = all_reduce(torch.cat([mean, meansq])) / dist.get_world_size()
            mean, meansq = stats.split(channels)
            total = count * dist.get_world_size()
        else:
            n = torch.tensor([count], device=x.device, dtype=torch.float32)
            stats = all_reduce(torch.cat([mean * count, meansq * count, n]))
            total = float(stats[-1].detach())
            mean, meansq = (stats[:-1] / stats[-1]).split(channels)
        var = (meansq - mean * mean).clamp(min=0)
        with torch.no_grad():
            self.num_batches_tracked += 1
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            running_var = var if self.naive else var * total / max(total - 1, 1)
            self.running_mean += factor * (mean.detach() - self.running_mean)
            self.running_var += factor * (running_var.detach() - self.running_var)
        scale = self.weight * torch.rsqrt(var + self.eps)
        shift = self.bias - mean * scale
        return (xf * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)).to(x.dtype)


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over ranks (torch 2.14 flags the public API as deprecated in favour
    of a private module; it still works, so the warning is silenced here)."""
    from torch.distributed.nn.functional import all_reduce as reduce_sum

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return reduce_sum(t)


def get_norm(name: str, channels: int) -> nn.Module | None:
    """detectron2's get_norm: '' -> None (no norm layer)."""
    if name == "":
        return None
    if name == "BN":
        return nn.BatchNorm2d(channels)
    if name == "SyncBN":
        return SyncBatchNorm2d(channels)
    if name == "naiveSyncBN":
        return SyncBatchNorm2d(channels, naive=True)
    if name == "FrozenBN":
        return FrozenBatchNorm2d(channels)
    if name == "GN":
        return nn.GroupNorm(32, channels)
    raise UserError(f"norm {name!r} is not one of {', '.join(repr(n) for n in NORMS)}")


def norm_factory(name: str):
    """A ``channels -> module`` callable for build_resnet (which needs a norm)."""
    if name == "":
        raise UserError("MODEL.RESNETS.NORM: the ResNet needs a norm; '' is not allowed there")
    get_norm(name, 32)  # validate the name once, up front
    return lambda channels: get_norm(name, channels)


def freeze_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a FrozenBatchNorm2d holding its statistics
    (detectron2's FrozenBatchNorm2d.convert_frozen_batchnorm, used on frozen stages)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new = freeze_norms(child)
        if new is not child:
            setattr(module, name, new)
    return module


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers whose statistics are trained (precise BN recomputes these)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
