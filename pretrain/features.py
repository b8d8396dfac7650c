"""Frozen pooled features of a torchvision ResNet trunk (what kNN and the linear probe see)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision.models.resnet import ResNet

from mocobench.pretrain.data import user_errors_from_workers


def pooled_features(net: ResNet, x: torch.Tensor) -> torch.Tensor:
    """res5 output, global-average pooled: the input of the fc (or the MoCo head)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


@torch.no_grad()
def extract(net: ResNet, loader: DataLoader, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of a whole loader, with the network in eval mode (restored after)."""
    was_training = net.training
    net.eval()
    feats, labels = [], []
    with user_errors_from_workers():
        for images, target in loader:
            feats.append(pooled_features(net, images.to(device)).float().cpu())
            labels.append(target)
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def load_trunk(net: nn.Module, trunk: dict[str, torch.Tensor], source: str) -> None:
    """Load trunk weights into a torchvision ResNet, refusing anything but a missing fc."""
    missing, unexpected = net.load_state_dict(trunk, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not fit the ResNet: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")


@torch.no_grad()
def estimate_bn_stats(net: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Set every BN layer's running statistics to the data's, weights untouched.

    Why: a freshly initialised ResNet's running statistics are (0, 1), so in eval mode its
    BN layers do nothing and its features are those of an unnormalised random network, a
    network that never runs in training. A trained encoder's features are normalised by
    statistics of real images; for a like-for-like random-init baseline its statistics
    must come from images too (the true mean over the loader, as precise BN computes).
    """
    from fvcore.nn.precise_bn import update_bn_stats

    was_training = net.training
    net.train()
    with user_errors_from_workers():
        update_bn_stats(net, (images.to(device) for images, _ in loader), num_iters=len(loader))
    net.train(was_training)
