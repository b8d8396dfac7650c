"""The paper's R50-dilated-C5 backbone (appendix A.1): detectron2's ResNet with a dilated
res5, then a 3x3 conv + norm + ReLU reducing it to MODEL.DC5.CONV_DIM channels (a mocobench
extension key; 0 leaves it out, which is detectron2's own DilatedC5).

The ResNet's parameters keep detectron2's names (backbone.stem.*, backbone.res5.*) so
converted .pkl weights load unchanged; the reduction is backbone.dc5_conv.{weight,norm.*}."""

from __future__ import annotations

import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet, build_resnet_backbone
from fvcore.nn import weight_init

NAME = "build_resnet_dc5_reduced_backbone"


class ReducedDilatedC5(ResNet):
    def __init__(self, resnet: ResNet, conv_dim: int, norm: str) -> None:
        (out_feature,) = resnet._out_features
        super().__init__(resnet.stem, [list(getattr(resnet, n)) for n in resnet.stage_names],
                         out_features=[out_feature])  # stages arrive already frozen per FREEZE_AT
        in_channels = self._out_feature_channels[out_feature]
        self.dc5_conv = Conv2d(in_channels, conv_dim, 3, padding=1, bias=not norm,
                               norm=get_norm(norm, conv_dim))
        weight_init.c2_msra_fill(self.dc5_conv)
        self._out_feature_channels[out_feature] = conv_dim

    def forward(self, x):
        outputs = super().forward(x)
        name = self._out_features[0]
        outputs[name] = F.relu(self.dc5_conv(outputs[name]))
        return outputs


def uses_reduced_dc5(cfg: CfgNode) -> bool:
    """As the torchvision engine: the reduction applies to a ResNet backbone ending in res5."""
    return (cfg.MODEL.DC5.CONV_DIM > 0 and cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
            and list(cfg.MODEL.RESNETS.OUT_FEATURES) == ["res5"])


def build_resnet_dc5_reduced_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ReducedDilatedC5:
    return ReducedDilatedC5(build_resnet_backbone(cfg, input_shape), cfg.MODEL.DC5.CONV_DIM, cfg.MODEL.DC5.NORM)


if NAME not in BACKBONE_REGISTRY:
    BACKBONE_REGISTRY.register(build_resnet_dc5_reduced_backbone)
