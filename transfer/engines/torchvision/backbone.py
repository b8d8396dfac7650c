"""Backbones over the shared ResNet trunk: C4 (stem..res4), dilated C5 (+ the paper's 3x3
conv reducing res5 to 512 channels) and FPN (res2..res5 -> p2..p6).

The trunk is ``mocobench.resnet.build_resnet`` (torchvision's ResNet at any width), cut
with torchvision's IntermediateLayerGetter, so its parameter names stay torchvision's and
``tv_to_d2`` maps them to detectron2's. A hook sees the whole trunk before it is cut, which
is where init weights are loaded (the C4 model's res5 lives in the RoI heads).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from mocobench import UserError
from mocobench.resnet import ConfigurableResNet, ResNetShape, build_resnet
from mocobench.transfer.engines.torchvision.norm import freeze_norms, get_norm, norm_factory

TrunkHook = Callable[[ConfigurableResNet], None]
# detectron2 stage name -> torchvision trunk layer; FREEZE_AT counts in this order
STAGES = (("stem", ("conv1", "bn1")), ("res2", ("layer1",)), ("res3", ("layer2",)),
          ("res4", ("layer3",)), ("res5", ("layer4",)))
STAGE_LAYER = {"res2": "layer1", "res3": "layer2", "res4": "layer3", "res5": "layer4"}
STAGE_STRIDE = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def resnet_shape(cfg: CfgNode) -> ResNetShape:
    r = cfg.MODEL.RESNETS
    shape = ResNetShape(r.DEPTH, r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, r.WIDTH_PER_GROUP, r.NUM_GROUPS)
    try:
        shape.validate()
    except ValueError as e:
        raise UserError(f"MODEL.RESNETS: {e}") from None
    return shape


def stage_channels(shape: ResNetShape, stage: str) -> int:
    return shape.res2_out_channels * 2 ** (int(stage[3]) - 2)


def build_trunk(cfg: CfgNode, hook: Optional[TrunkHook] = None) -> ConfigurableResNet:
    """The whole ResNet (weights loaded by ``hook``), with the first FREEZE_AT stages frozen."""
    r = cfg.MODEL.RESNETS
    try:
        trunk = build_resnet(resnet_shape(cfg), norm_layer=norm_factory(r.NORM),
                             stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION)
    except ValueError as e:
        raise UserError(f"MODEL.RESNETS: {e}") from None
    del trunk.fc, trunk.avgpool  # the classifier is not part of a detector
    if hook is not None:
        hook(trunk)
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not 0 <= freeze_at <= 5:
        raise UserError(f"MODEL.BACKBONE.FREEZE_AT must be 0..5, got {freeze_at}")
    for _, layers in STAGES[:freeze_at]:
        for name in layers:
            module = getattr(trunk, name)
            for p in module.parameters():
                p.requires_grad_(False)
            setattr(trunk, name, freeze_norms(module))
    return trunk


class TrunkBackbone(nn.Module):
    """ResNet features by detectron2 names (res4 for C4, res5 for DC5)."""

    def __init__(self, trunk: ConfigurableResNet, out_feature: str, out_channels: int, stride: int,
                 extra: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(trunk, {STAGE_LAYER[out_feature]: out_feature})
        self.extra = extra
        self.out_feature = out_feature
        self.out_channels = out_channels
        self.strides = {out_feature: stride}
        self.size_divisibility = 0

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        if self.extra is not None:
            feats[self.out_feature] = self.extra(feats[self.out_feature])
        return feats


def dc5_reduction(cfg: CfgNode, in_channels: int) -> Optional[nn.Module]:
    """The paper's (appendix A.1) 3x3 conv + norm + ReLU after the dilated res5;
    MODEL.DC5.CONV_DIM 0 leaves it out (detectron2's own DilatedC5)."""
    dim = cfg.MODEL.DC5.CONV_DIM
    if dim <= 0:
        return None
    norm = get_norm(cfg.MODEL.DC5.NORM, dim)
    conv = nn.Conv2d(in_channels, dim, 3, padding=1, bias=norm is None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    layers = OrderedDict(conv=conv)
    if norm is not None:
        layers["norm"] = norm
    layers["relu"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


class FPNBackbone(nn.Module):
    """res2..res5 -> p2..p5 (+ p6 by stride-2 max pool, for the RPN), torchvision's FPN."""

    def __init__(self, trunk: ConfigurableResNet, in_features: list[str], out_channels: int,
                 norm: str) -> None:
        super().__init__()
        shape = trunk.shape
        self.in_features = in_features
        self.body = IntermediateLayerGetter(trunk, {STAGE_LAYER[f]: f for f in in_features})
        norm_layer = (lambda c: get_norm(norm, c)) if norm else None
        self.fpn = FeaturePyramidNetwork([stage_channels(shape, f) for f in in_features], out_channels,
                                         extra_blocks=LastLevelMaxPool(), norm_layer=norm_layer)
        levels = [int(f[3]) for f in in_features]
        self.names = [f"p{lvl}" for lvl in levels] + [f"p{levels[-1] + 1}"]
        self.strides = {f"p{lvl}": 2 ** lvl for lvl in levels + [levels[-1] + 1]}
        self.out_channels = out_channels
        self.size_divisibility = 2 ** levels[-1]

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.fpn(self.body(x))
        return OrderedDict(zip(self.names, feats.values()))


def build_backbone(cfg: CfgNode, hook: Optional[TrunkHook] = None) -> tuple[nn.Module, Optional[nn.Module]]:
    """(backbone, res5) — res5 is the trunk's last stage when the RoI heads own it (C4)."""
    name = cfg.MODEL.BACKBONE.NAME
    out = list(cfg.MODEL.RESNETS.OUT_FEATURES)
    trunk = build_trunk(cfg, hook)
    shape = trunk.shape
    if name == "build_resnet_fpn_backbone":
        in_features = list(cfg.MODEL.FPN.IN_FEATURES)
        if not in_features or any(f not in STAGE_LAYER for f in in_features):
            raise UserError(f"MODEL.FPN.IN_FEATURES must name res2..res5 stages, got {in_features}")
        if cfg.MODEL.FPN.FUSE_TYPE != "sum":
            raise UserError(f"MODEL.FPN.FUSE_TYPE {cfg.MODEL.FPN.FUSE_TYPE!r}: only 'sum' is implemented")
        return FPNBackbone(trunk, in_features, cfg.MODEL.FPN.OUT_CHANNELS, cfg.MODEL.FPN.NORM), None
    if name != "build_resnet_backbone":
        raise UserError(f"MODEL.BACKBONE.NAME {name!r}: the torchvision engine builds "
                        "build_resnet_backbone (C4, DC5) and build_resnet_fpn_backbone")
    if out == ["res4"]:
        if cfg.MODEL.RESNETS.RES5_DILATION != 1:
            raise UserError("MODEL.RESNETS.RES5_DILATION must be 1 with OUT_FEATURES ['res4'] "
                            "(C4: res5 runs in the RoI heads)")
        res5 = trunk.layer4
        del trunk.layer4
        return TrunkBackbone(trunk, "res4", stage_channels(shape, "res4"), 16), res5
    if out == ["res5"]:
        extra = dc5_reduction(cfg, shape.out_channels)
        channels = cfg.MODEL.DC5.CONV_DIM if extra is not None else shape.out_channels
        stride = 16 if cfg.MODEL.RESNETS.RES5_DILATION == 2 else 32
        return TrunkBackbone(trunk, "res5", channels, stride, extra), None
    raise UserError(f"MODEL.RESNETS.OUT_FEATURES {out}: the torchvision engine builds ['res4'] (C4), "
                    "['res5'] (dilated C5) or FPN over res2..res5")
