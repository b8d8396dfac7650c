"""Semantic segmentation on the detectron2 engine: the MoCo paper's FCN head (appendix A.5) registered
in detectron2's SEM_SEG_HEADS_REGISTRY as ``MoCoFCNHead``, run by detectron2's own SemanticSegmentor
(normalisation, padding the targets with the ignore value, sem_seg_postprocess) and SemSegEvaluator.

The head reads the one feature SEM_SEG_HEAD.IN_FEATURES names (res5 of a ResNet with a dilated res5:
stride 16), then two 3x3 detectron2 Conv2d of CONVS_DIM channels at dilation 6 with NORM and ReLU,
then a 1x1 Conv2d to NUM_CLASSES logits; training upsamples the logits bilinearly to the targets
(align_corners False) and takes the cross-entropy over pixels not labelled IGNORE_VALUE, times
LOSS_WEIGHT; inference returns them at stride 16 for sem_seg_postprocess to upsample. Its weights are
named as the torchvision engine's (sem_seg_head.convs.<i>.{weight,norm.*}, sem_seg_head.predictor.*).

Training input: detectron2's config has no "scale by a random factor, then pad and crop" augmentation,
so its train loader maps each record with the suite's own (transfer/engines/torchvision/semseg.py's
SemSegTrainMapper: INPUT.RANDOM_SCALE, INPUT.CROP, INPUT.RANDOM_FLIP), drawing from detectron2's
seeded NumPy generator. It reads a label map by its indices: detectron2's DatasetMapper would read it
converted to 'L', which turns VOC's palette PNGs into grey levels, not classes. Testing uses
detectron2's DatasetMapper (INPUT.MIN_SIZE_TEST 0: the original size); the label map it reads there is
not used, as SemSegEvaluator reads the ground truth itself.
"""

from __future__ import annotations

import copy
from typing import Dict

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from mocobench.transfer.engines.torchvision.semseg import DILATION, HEAD_NAME, NUM_CONVS, SemSegTrainMapper


class MoCoFCNHead(nn.Module):
    def __init__(self, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> None:
        super().__init__()
        h = cfg.MODEL.SEM_SEG_HEAD
        if len(h.IN_FEATURES) != 1:
            raise ValueError(f"{HEAD_NAME} reads one feature map; MODEL.SEM_SEG_HEAD.IN_FEATURES is "
                             f"{list(h.IN_FEATURES)}")
        self.in_feature = h.IN_FEATURES[0]
        self.ignore_value, self.loss_weight = h.IGNORE_VALUE, h.LOSS_WEIGHT
        channels = input_shape[self.in_feature].channels
        self.convs = nn.ModuleList()
        for i in range(NUM_CONVS):
            conv = Conv2d(channels if i == 0 else h.CONVS_DIM, h.CONVS_DIM, kernel_size=3, padding=DILATION,
                          dilation=DILATION, bias=not h.NORM, norm=get_norm(h.NORM, h.CONVS_DIM), activation=F.relu)
            weight_init.c2_msra_fill(conv)
            self.convs.append(conv)
        self.predictor = Conv2d(h.CONVS_DIM, h.NUM_CLASSES, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

    def forward(self, features, targets=None):
        x = features[self.in_feature]
        for conv in self.convs:
            x = conv(x)
        x = self.predictor(x)
        if self.training:
            return None, self.losses(x, targets)
        return x, {}

    def losses(self, predictions, targets):
        predictions = F.interpolate(predictions.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if not (targets != self.ignore_value).any():  # a batch without a labelled pixel: 0, not NaN
            loss = predictions.sum() * 0.0
        else:
            loss = F.cross_entropy(predictions, targets, reduction="mean", ignore_index=self.ignore_value)
        return {"loss_sem_seg": loss * self.loss_weight}


if HEAD_NAME not in SEM_SEG_HEADS_REGISTRY:
    SEM_SEG_HEADS_REGISTRY.register(MoCoFCNHead)


class SemSegDatasetMapper:
    """A dataset dict -> detectron2's input dict ({"image", "sem_seg", "height", "width", ...}) through
    the suite's training input, each draw from np.random (seeded per worker by detectron2)."""

    def __init__(self, cfg: CfgNode) -> None:
        self.mapper = SemSegTrainMapper(cfg)

    def __call__(self, dataset_dict: dict) -> dict:
        out = copy.deepcopy(dataset_dict)
        rng = np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))
        image, target = self.mapper(out, rng)
        out.pop("annotations", None)
        out.update(image=image, sem_seg=target["sem_seg"], height=int(image.shape[-2]), width=int(image.shape[-1]))
        return out


def build_semseg_train_loader(cfg: CfgNode):
    return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg))
