"""RoI pooling as detectron2's ROIPooler: ROIAlignV2 is roi_align(aligned=True), which
torchvision's MultiScaleRoIAlign does not offer (it calls aligned=False), and FPN levels
are assigned by detectron2's rule (canonical box 224 at level 4)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torchvision.ops import roi_align

from mocobench import UserError

POOLER_TYPES = {"ROIAlignV2": True, "ROIAlign": False}
CANONICAL_BOX_SIZE = 224
CANONICAL_LEVEL = 4


class ROIPooler(nn.Module):
    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int, pooler_type: str) -> None:
        super().__init__()
        if pooler_type not in POOLER_TYPES:
            raise UserError(f"POOLER_TYPE {pooler_type!r}: the torchvision engine implements "
                            f"{', '.join(POOLER_TYPES)}")
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = POOLER_TYPES[pooler_type]
        self.min_level = int(math.log2(strides[0]))
        self.max_level = int(math.log2(strides[-1]))

    def _align(self, x: torch.Tensor, rois: torch.Tensor, scale: float) -> torch.Tensor:
        return roi_align(x, rois.to(x.dtype), self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        if len(features) == 1:
            return self._align(features[0], rois, self.scales[0])
        sizes = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(CANONICAL_LEVEL + torch.log2(sizes / CANONICAL_BOX_SIZE + 1e-8))
        levels = levels.clamp(self.min_level, self.max_level).long() - self.min_level
        out = features[0].new_zeros((rois.shape[0], features[0].shape[1], self.output_size, self.output_size))
        for level, (x, scale) in enumerate(zip(features, self.scales)):
            idx = torch.nonzero(levels == level).squeeze(1)
            out[idx] = self._align(x, rois[idx], scale).to(out.dtype)
        return out
