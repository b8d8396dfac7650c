"""Frozen pooled features of a torchvision ResNet trunk (what kNN and the linear probe see)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision.models.resnet import ResNet

from pretrain.data import user_errors_from_workers


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
