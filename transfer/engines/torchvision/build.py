"""Compose a Faster / Mask R-CNN from a detectron2 config.

GeneralizedRCNN is torchvision's; its forward is replaced because detectron2 normalises
with the config's PIXEL_MEAN/STD in INPUT.FORMAT order on 0-255 pixels, resizes in the data
pipeline (not inside the model), pads only to the backbone's size divisibility, and feeds
the RPN and the RoI heads the feature maps their IN_FEATURES name.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

from mocobench import UserError
from mocobench.transfer.engines.torchvision.backbone import TrunkHook, build_backbone, resnet_shape
from mocobench.transfer.engines.torchvision.roi_heads import build_roi_heads
from mocobench.transfer.engines.torchvision.rpn import build_rpn


class Normalizer(nn.Module):
    """(x - PIXEL_MEAN) / PIXEL_STD, then zero-pad the batch to one size."""

    def __init__(self, pixel_mean: list[float], pixel_std: list[float], size_divisibility: int) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.size_divisibility = size_divisibility

    def forward(self, images: list[Tensor]) -> ImageList:
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        h = max(s[0] for s in sizes)
        w = max(s[1] for s in sizes)
        if self.size_divisibility > 1:
            d = self.size_divisibility
            h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
        batch = images[0].new_zeros((len(images), images[0].shape[0], h, w), dtype=torch.float32)
        for i, im in enumerate(images):
            batch[i, :, : im.shape[-2], : im.shape[-1]] = (im.float() - self.pixel_mean) / self.pixel_std
        return ImageList(batch, sizes)


class DetectronRCNN(GeneralizedRCNN):
    """images: list of CHW float tensors, 0-255, in INPUT.FORMAT channel order, already resized.
    Training returns the loss dict; inference returns per-image dicts (boxes in the input
    image's coordinates, labels 0-based, masks as MxM probabilities per box)."""

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, normalizer: Normalizer) -> None:
        super().__init__(backbone, rpn, roi_heads, transform=normalizer)

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("training needs targets")
        image_list = self.transform(images)
        features = self.backbone(image_list.tensors)
        rpn_features = {f: features[f] for f in self.rpn.in_features}
        proposals, rpn_losses = self.rpn(image_list, rpn_features, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return detections


def build_model(cfg: CfgNode, trunk_hook: Optional[TrunkHook] = None) -> DetectronRCNN:
    """The detector for ``cfg``; ``trunk_hook`` sees the whole ResNet before it is split
    between backbone and RoI heads (init weights are loaded there)."""
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN" or cfg.MODEL.PROPOSAL_GENERATOR.NAME != "RPN":
        raise UserError("MODEL.META_ARCHITECTURE / PROPOSAL_GENERATOR.NAME: the torchvision engine builds "
                        "GeneralizedRCNN with an RPN")
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        raise UserError("MODEL.PIXEL_MEAN / PIXEL_STD: give 3 values each")
    backbone, res5 = build_backbone(cfg, trunk_hook)
    strides = backbone.strides
    rpn = build_rpn(cfg, backbone.out_channels, strides)
    roi_heads = build_roi_heads(cfg, backbone.out_channels, strides, res5, resnet_shape(cfg).out_channels)
    normalizer = Normalizer(list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD), backbone.size_divisibility)
    return DetectronRCNN(backbone, rpn, roi_heads, normalizer)
