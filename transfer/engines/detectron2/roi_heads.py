"""Res5ROIHeadsExtraNorm: the MoCo paper's C4 head, with one more norm layer (of
MODEL.RESNETS.NORM) after res5, so the features the box predictor sees are normalised the
way the backbone's are when the backbone's norms are trained. Registered in detectron2's
ROI_HEADS_REGISTRY on import; its weights are named roi_heads.res5.norm.*, as the
torchvision engine names them."""

from __future__ import annotations

from detectron2.layers import get_norm
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads


class Res5ROIHeadsExtraNorm(Res5ROIHeads):
    def __init__(self, cfg, input_shape) -> None:
        super().__init__(cfg, input_shape)
        channels = self.res5[-1].out_channels
        self.res5.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, channels))


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:  # e.g. the MoCo authors' train_net already did
    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)
