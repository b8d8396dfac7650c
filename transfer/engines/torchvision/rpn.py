"""detectron2's RPN on torchvision's RegionProposalNetwork and RPNHead.

Replaced where torchvision differs: anchors are not rounded, are ordered size-major (so
the head's channels line up with detectron2's) and use the backbone's fixed strides (not
image size // feature size); the box loss is detectron2's smooth-L1 with SMOOTH_L1_BETA
(0: plain L1), both losses are normalised by BATCH_SIZE_PER_IMAGE * images and scaled by
LOSS_WEIGHT; proposals are kept when their width and height exceed MIN_SIZE (torchvision
keeps >= max(MIN_SIZE, 1e-5), dropping nearly empty boxes that detectron2 trains on).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import batched_nms, clip_boxes_to_image

from mocobench import UserError


def box_regression_loss(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Summed smooth-L1 as detectron2 defines it: beta < 1e-5 is plain L1."""
    if beta < 1e-5:
        return (pred - target).abs().sum()
    return F.smooth_l1_loss(pred, target, beta=beta, reduction="sum")


class DetectronAnchorGenerator(AnchorGenerator):
    """DefaultAnchorGenerator: per level, for each size, for each aspect ratio (h/w)."""

    def __init__(self, sizes, aspect_ratios, strides: list[int], offset: float) -> None:
        self.strides = strides
        self.offset = offset
        super().__init__(sizes, aspect_ratios)

    def generate_anchors(self, scales, aspect_ratios, dtype=torch.float32, device=torch.device("cpu")) -> Tensor:
        anchors = []
        for size in scales:
            for ratio in aspect_ratios:
                w = math.sqrt(size * size / ratio)
                h = ratio * w
                anchors.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(anchors, dtype=dtype, device=device)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        grid_sizes = [list(f.shape[-2:]) for f in feature_maps]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        self.set_cell_anchors(dtype, device)
        anchors = []
        for (gh, gw), stride, base in zip(grid_sizes, self.strides, self.cell_anchors):
            xs = (torch.arange(gw, device=device, dtype=torch.float32) + self.offset) * stride
            ys = (torch.arange(gh, device=device, dtype=torch.float32) + self.offset) * stride
            sy, sx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([sx.reshape(-1), sy.reshape(-1)] * 2, dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base.view(1, -1, 4).float()).reshape(-1, 4).to(dtype))
        per_level = torch.cat(anchors)
        return [per_level for _ in range(len(image_list.image_sizes))]


class DetectronRPN(RegionProposalNetwork):
    def __init__(self, *args, smooth_l1_beta: float, loss_weight: float, box_loss_weight: float,
                 min_size: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.smooth_l1_beta = smooth_l1_beta
        self.loss_weight = loss_weight
        self.box_loss_weight = box_loss_weight
        self.min_size = min_size
        self.batch_size_per_image = self.fg_bg_sampler.batch_size_per_image

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level the PRE_NMS_TOPK best; per image: clip, keep width and height > MIN_SIZE,
        NMS within each level, the POST_NMS_TOPK best. Returns boxes and objectness logits."""
        n = proposals.shape[0]
        logits = objectness.detach().reshape(n, -1)
        top_boxes, top_logits, levels = [], [], []
        for level, (boxes, scores) in enumerate(zip(proposals.split(num_anchors_per_level, 1),
                                                    logits.split(num_anchors_per_level, 1))):
            k = min(self.pre_nms_top_n(), scores.shape[1])
            best, idx = scores.topk(k, dim=1)
            top_logits.append(best)
            top_boxes.append(torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4)))
            levels.append(torch.full((k,), level, dtype=torch.int64, device=proposals.device))
        level_ids = torch.cat(levels)
        out_boxes, out_logits = [], []
        for boxes, scores, shape in zip(torch.cat(top_boxes, 1), torch.cat(top_logits, 1), image_shapes):
            lvl = level_ids
            finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not finite.all():
                if self.training:
                    raise FloatingPointError("RPN proposals or scores are not finite: training diverged")
                boxes, scores, lvl = boxes[finite], scores[finite], lvl[finite]
            boxes = clip_boxes_to_image(boxes, shape)
            keep = ((boxes[:, 2] - boxes[:, 0]) > self.min_size) & ((boxes[:, 3] - boxes[:, 1]) > self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            out_boxes.append(boxes[keep])
            out_logits.append(scores[keep])
        return out_boxes, out_logits

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(pos))[0]
        sampled = torch.cat([pos, torch.where(torch.cat(neg))[0]])
        labels_all = torch.cat(labels)
        targets = torch.cat(regression_targets)
        normalizer = self.batch_size_per_image * len(labels)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], labels_all[sampled], reduction="sum") / normalizer
        box_loss = box_regression_loss(pred_bbox_deltas[pos].float(), targets[pos],
                                       self.smooth_l1_beta) / normalizer
        return objectness_loss * self.loss_weight, box_loss * self.box_loss_weight * self.loss_weight


def build_rpn(cfg: CfgNode, in_channels: int, strides: dict[str, int]) -> DetectronRPN:
    r, a = cfg.MODEL.RPN, cfg.MODEL.ANCHOR_GENERATOR
    features = list(r.IN_FEATURES)
    missing = [f for f in features if f not in strides]
    if missing:
        raise UserError(f"MODEL.RPN.IN_FEATURES {features}: the backbone has no {missing} "
                        f"(it gives {list(strides)})")
    if a.NAME != "DefaultAnchorGenerator":
        raise UserError(f"MODEL.ANCHOR_GENERATOR.NAME {a.NAME!r}: only DefaultAnchorGenerator is implemented")
    if r.HEAD_NAME != "StandardRPNHead" or list(r.CONV_DIMS) != [-1]:
        raise UserError("MODEL.RPN.HEAD_NAME / CONV_DIMS: only StandardRPNHead with one conv is implemented")
    if list(r.IOU_LABELS) != [0, -1, 1] or r.BOUNDARY_THRESH != -1 or r.BBOX_REG_LOSS_TYPE != "smooth_l1":
        raise UserError("MODEL.RPN.IOU_LABELS / BOUNDARY_THRESH / BBOX_REG_LOSS_TYPE: only detectron2's "
                        "defaults ([0, -1, 1], -1, smooth_l1) are implemented")
    sizes = [list(s) for s in a.SIZES]
    ratios = [list(x) for x in a.ASPECT_RATIOS]
    if len(sizes) == 1:
        sizes = sizes * len(features)
    if len(ratios) == 1:
        ratios = ratios * len(features)
    if len(sizes) != len(features) or len(ratios) != len(features):
        raise UserError(f"MODEL.ANCHOR_GENERATOR: SIZES/ASPECT_RATIOS give {len(sizes)}/{len(ratios)} "
                        f"levels for {len(features)} RPN features")
    anchors = DetectronAnchorGenerator(tuple(map(tuple, sizes)), tuple(map(tuple, ratios)),
                                       [strides[f] for f in features], a.OFFSET)
    num_anchors = anchors.num_anchors_per_location()
    if len(set(num_anchors)) != 1:
        raise UserError("MODEL.ANCHOR_GENERATOR: every level needs the same number of anchors")
    head = RPNHead(in_channels, num_anchors[0])
    rpn = DetectronRPN(
        anchors, head, fg_iou_thresh=r.IOU_THRESHOLDS[1], bg_iou_thresh=r.IOU_THRESHOLDS[0],
        batch_size_per_image=r.BATCH_SIZE_PER_IMAGE, positive_fraction=r.POSITIVE_FRACTION,
        pre_nms_top_n={"training": r.PRE_NMS_TOPK_TRAIN, "testing": r.PRE_NMS_TOPK_TEST},
        post_nms_top_n={"training": r.POST_NMS_TOPK_TRAIN, "testing": r.POST_NMS_TOPK_TEST},
        nms_thresh=r.NMS_THRESH, smooth_l1_beta=r.SMOOTH_L1_BETA, loss_weight=r.LOSS_WEIGHT,
        box_loss_weight=r.BBOX_REG_LOSS_WEIGHT, min_size=cfg.MODEL.PROPOSAL_GENERATOR.MIN_SIZE)
    rpn.box_coder.weights = tuple(r.BBOX_REG_WEIGHTS)
    rpn.in_features = features
    return rpn
