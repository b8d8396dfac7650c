"""Box and mask heads, named as detectron2 names them (box_head.fc1, box_predictor.cls_score,
mask_head.mask_fcn1 / deconv / predictor) so a weight table to detectron2 is name-for-name."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from mocobench.transfer.engines.torchvision.norm import get_norm


def msra_fill(layer: nn.Module) -> nn.Module:
    """detectron2's c2_msra_fill (conv layers)."""
    nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def xavier_fill(layer: nn.Module) -> nn.Module:
    """detectron2's c2_xavier_fill (fc layers)."""
    nn.init.kaiming_uniform_(layer.weight, a=1)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    norm_layer = get_norm(norm, out_channels)
    layers = [msra_fill(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=norm_layer is None))]
    if norm_layer is not None:
        layers.append(norm_layer)
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


class Res5BoxHead(nn.Module):
    """C4: pooled res4 features -> res5 (-> the MoCo configs' extra norm) -> mean pool.
    Returns the pooled vector and the res5 map (the C4 mask head reads the latter)."""

    def __init__(self, res5: nn.Sequential, extra_norm: Optional[nn.Module]) -> None:
        super().__init__()
        if extra_norm is not None:
            res5.add_module("norm", extra_norm)  # detectron2 name: roi_heads.res5.norm
        self.res5 = res5

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.res5(x)
        return x.mean(dim=(2, 3)), x


class ConvFCBoxHead(nn.Module):
    """detectron2's FastRCNNConvFCHead: NUM_CONV 3x3 convs, then NUM_FC fc layers."""

    def __init__(self, in_channels: int, resolution: int, num_conv: int, conv_dim: int,
                 num_fc: int, fc_dim: int, norm: str) -> None:
        super().__init__()
        channels = in_channels
        for i in range(num_conv):
            self.add_module(f"conv{i + 1}", conv_norm_relu(channels, conv_dim, norm))
            channels = conv_dim
        size = channels * resolution * resolution
        for i in range(num_fc):
            self.add_module(f"fc{i + 1}", xavier_fill(nn.Linear(size, fc_dim)))
            size = fc_dim
        self.out_channels = size

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        for name, layer in self.named_children():
            if name.startswith("fc") and x.dim() > 2:
                x = x.flatten(1)
            x = layer(x)
            if name.startswith("fc"):
                x = torch.relu(x)
        return x.flatten(1), None


class BoxPredictor(nn.Module):
    """detectron2's FastRCNNOutputLayers: K+1 scores with background LAST, K*4 deltas."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """detectron2's MaskRCNNConvUpsampleHead: NUM_CONV convs, 2x deconv, per-class 1x1 logits."""

    def __init__(self, in_channels: int, num_classes: int, num_conv: int, conv_dim: int, norm: str) -> None:
        super().__init__()
        channels = in_channels
        for i in range(num_conv):
            self.add_module(f"mask_fcn{i + 1}", conv_norm_relu(channels, conv_dim, norm))
            channels = conv_dim
        self.deconv = msra_fill(nn.ConvTranspose2d(channels, conv_dim, 2, stride=2))
        self.predictor = nn.Conv2d(conv_dim, num_classes, 1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.zeros_(self.predictor.bias)

    def forward(self, x: Tensor) -> Tensor:
        for name, layer in self.named_children():
            x = layer(x)
            if name == "deconv":
                x = torch.relu(x)
        return x
