"""Precise BN as detectron2 computes it (fvcore's population estimate): the statistics of all
the batches' values pooled, each value weighted once, variance without Bessel's correction."""

from __future__ import annotations

import torch
import torch.nn as nn

from mocobench.transfer.engines.torchvision.precise_bn import update_bn_stats


def test_statistics_are_those_of_all_values_pooled():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 4, 5, generator=g) * 2 + 1, torch.randn(1, 3, 2, 2, generator=g) - 3]
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.BatchNorm2d(3)).train()
    model[0].momentum = 0.3
    used = update_bn_stats(model, iter(batches), model, 5)
    assert used == 2
    pooled = torch.cat([b.permute(1, 0, 2, 3).reshape(3, -1) for b in batches], dim=1)
    assert torch.allclose(model[0].running_mean, pooled.mean(1), atol=1e-6)
    assert torch.allclose(model[0].running_var, pooled.var(1, unbiased=False), atol=1e-5)
    assert model[0].momentum == 0.3  # restored for training


def test_layers_the_forward_skips_keep_their_statistics_out_of_it():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.always, self.sometimes = nn.BatchNorm2d(2), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.always(x)
            return self.sometimes(x) if x.shape[-1] > 2 else y

    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(1, 2, 3, 3, generator=g), torch.randn(1, 2, 2, 2, generator=g) + 5]
    model = Branchy().train()
    update_bn_stats(model, iter(batches), model, 2)
    first = batches[0].permute(1, 0, 2, 3).reshape(2, -1)
    assert torch.allclose(model.sometimes.running_mean, first.mean(1), atol=1e-6)
