"""detectron2's Res5ROIHeads / StandardROIHeads on torchvision's RoIHeads.

torchvision's proposal matching and sampling are kept (Matcher without low-quality matches,
BalancedPositiveNegativeSampler, gt boxes appended to the proposals). Replaced: the
predictor layout (background last, class-specific deltas without a background entry),
the losses (smooth-L1 with detectron2's beta, 0 = L1), inference (score > thresh over
foreground classes, per-class NMS, top-k, no small-box filter) and mask targets (by
INPUT.MASK_FORMAT, as detectron2: polygons rasterised in each RoI, or bitmasks cropped with
roi_align aligned=True; see masks.py). Keypoints (MODEL.KEYPOINT_ON): detectron2's keypoint head,
loss and inference on the foreground RoIs, see keypoints.py. Labels inside
torchvision's sampling are 1..K with 0 = background; outputs are 0-based contiguous ids.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import batched_nms, clip_boxes_to_image

from mocobench import UserError
from mocobench.transfer.engines.torchvision.heads import BoxPredictor, ConvFCBoxHead, MaskHead, Res5BoxHead
from mocobench.transfer.engines.torchvision.keypoints import (KeypointHead, build_keypoint_branch,
                                                              heatmaps_to_keypoints, keypoint_rcnn_loss,
                                                              loss_normalizer, with_visible_keypoints)
from mocobench.transfer.engines.torchvision.masks import Polygons, bitmask_targets, polygon_targets
from mocobench.transfer.engines.torchvision.norm import get_norm
from mocobench.transfer.engines.torchvision.pooler import ROIPooler
from mocobench.transfer.engines.torchvision.rpn import box_regression_loss

ROI_HEADS = ("Res5ROIHeads", "Res5ROIHeadsExtraNorm", "StandardROIHeads")


def mask_targets(boxes: list[Tensor], gt_masks: list[Tensor | Polygons], matched: list[Tensor], size: int) -> Tensor:
    """float32 0/1 targets, size x size, for each RoI from the instance it matched, as
    detectron2's PolygonMasks / BitMasks.crop_and_resize (masks.py says how each is made).

    ``boxes[i]``: image i's foreground RoIs; ``gt_masks[i]``: its instances (Polygons, or an
    (N, H, W) mask tensor); ``matched[i]``: the instance index of each RoI.
    """
    crops = []
    for b, masks, idx in zip(boxes, gt_masks, matched):
        if len(b) == 0:
            continue
        make = polygon_targets if isinstance(masks, Polygons) else bitmask_targets
        crops.append(make(b, masks, idx, size))
    if not crops:
        return torch.zeros((0, size, size), dtype=torch.float32, device=boxes[0].device if boxes else None)
    return torch.cat(crops).float()


class DetectronRoIHeads(RoIHeads):
    def __init__(self, in_features: list[str], box_pooler: ROIPooler, box_head: nn.Module,
                 box_predictor: BoxPredictor, num_classes: int, cfg: CfgNode,
                 mask_pooler: Optional[ROIPooler] = None, mask_head: Optional[MaskHead] = None,
                 keypoint_pooler: Optional[ROIPooler] = None, keypoint_head: Optional[KeypointHead] = None) -> None:
        h, b = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD
        super().__init__(box_pooler, box_head, box_predictor,
                         fg_iou_thresh=h.IOU_THRESHOLDS[0], bg_iou_thresh=h.IOU_THRESHOLDS[0],
                         batch_size_per_image=h.BATCH_SIZE_PER_IMAGE, positive_fraction=h.POSITIVE_FRACTION,
                         bbox_reg_weights=tuple(b.BBOX_REG_WEIGHTS), score_thresh=h.SCORE_THRESH_TEST,
                         nms_thresh=h.NMS_THRESH_TEST, detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE)
        self.in_features = in_features
        self.num_classes = num_classes
        self.smooth_l1_beta = b.SMOOTH_L1_BETA
        self.box_loss_weight = b.BBOX_REG_LOSS_WEIGHT
        self.mask_on = mask_head is not None
        self.mask_pooler = mask_pooler  # None: the mask head reads the box head's map (C4)
        self.mask_head = mask_head
        # not torchvision's keypoint_roi_pool / keypoint_predictor: its own keypoint branch stays off
        self.keypoint_on = keypoint_head is not None
        self.keypoint_pooler, self.keypoint_head = keypoint_pooler, keypoint_head
        self.keypoint_normalizer = loss_normalizer(cfg)
        self.keypoint_loss_weight = cfg.MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT

    # ---- training ------------------------------------------------------------------
    def box_losses(self, cls_logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor) -> dict[str, Tensor]:
        gt_classes = torch.where(labels > 0, labels - 1, torch.full_like(labels, self.num_classes))
        loss_cls = F.cross_entropy(cls_logits.float(), gt_classes)
        fg = torch.nonzero(labels > 0).squeeze(1)
        fg_deltas = deltas.float().view(deltas.shape[0], -1, 4)[fg, gt_classes[fg]]
        loss_box = box_regression_loss(fg_deltas, targets[fg], self.smooth_l1_beta) / max(labels.numel(), 1)
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box * self.box_loss_weight}

    def mask_loss(self, logits: Tensor, boxes: list[Tensor], gt_masks: list[Tensor | Polygons],
                  matched: list[Tensor], labels: Tensor) -> Tensor:
        if logits.shape[0] == 0:
            return logits.sum() * 0
        target = mask_targets(boxes, gt_masks, matched, logits.shape[-1])
        chosen = logits[torch.arange(logits.shape[0], device=logits.device), labels - 1]
        return F.binary_cross_entropy_with_logits(chosen.float(), target)

    def keypoint_loss(self, feats: list[Tensor], proposals: list[Tensor], labels: list[Tensor],
                      matched: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
        """detectron2's: the foreground RoIs with a visible keypoint of their instance inside."""
        boxes, keypoints = [], []
        for p, lab, m, t in zip(proposals, labels, matched, targets):
            fg = lab > 0
            b, kps = p[fg], t["keypoints"][m[fg]]
            keep = with_visible_keypoints(b, kps)
            boxes.append(b[keep])
            keypoints.append(kps[keep])
        logits = self.keypoint_head(self.keypoint_pooler(feats, boxes))
        normalizer = None if self.keypoint_normalizer is None else len(boxes) * self.keypoint_normalizer
        return keypoint_rcnn_loss(logits, boxes, keypoints, normalizer) * self.keypoint_loss_weight

    # ---- inference -----------------------------------------------------------------
    def detect(self, cls_logits: Tensor, deltas: Tensor, proposals: list[Tensor],
               image_shapes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        counts = [len(p) for p in proposals]
        boxes_all = self.box_coder.decode(deltas.float(), proposals).split(counts)
        probs_all = F.softmax(cls_logits.float(), -1).split(counts)
        out = []
        for boxes, probs, shape in zip(boxes_all, probs_all, image_shapes):
            boxes = clip_boxes_to_image(boxes, shape)
            scores = probs[:, :-1]
            rows, classes = torch.nonzero(scores > self.score_thresh, as_tuple=True)
            boxes, scores = boxes[rows, classes], scores[rows, classes]
            keep = batched_nms(boxes, scores, classes, self.nms_thresh)[: self.detections_per_img]
            out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": classes[keep]})
        return out

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]], targets: Optional[list[dict[str, Tensor]]] = None):
        feats = [features[f] for f in self.in_features]
        if self.training:
            proposals, matched, labels, regression_targets = self.select_training_samples(proposals, targets)
        vectors, box_maps = self.box_head(self.box_roi_pool(feats, proposals))
        cls_logits, deltas = self.box_predictor(vectors)
        if self.training:
            labels_all = torch.cat(labels)
            losses = self.box_losses(cls_logits, deltas, labels_all, torch.cat(regression_targets))
            if self.mask_on:
                fg = [lab > 0 for lab in labels]
                fg_boxes = [p[f] for p, f in zip(proposals, fg)]
                mask_in = box_maps[labels_all > 0] if self.mask_pooler is None else self.mask_pooler(feats, fg_boxes)
                losses["loss_mask"] = self.mask_loss(self.mask_head(mask_in), fg_boxes,
                                                     [t["masks"] for t in targets],
                                                     [m[f] for m, f in zip(matched, fg)], labels_all[labels_all > 0])
            if self.keypoint_on:
                losses["loss_keypoint"] = self.keypoint_loss(feats, proposals, labels, matched, targets)
            return [], losses
        detections = self.detect(cls_logits, deltas, proposals, image_shapes)
        if self.mask_on:
            boxes = [d["boxes"] for d in detections]
            if sum(len(b) for b in boxes):
                mask_in = (self.box_head(self.box_roi_pool(feats, boxes))[1] if self.mask_pooler is None
                           else self.mask_pooler(feats, boxes))
                logits = self.mask_head(mask_in)
                classes = torch.cat([d["labels"] for d in detections])
                probs = logits[torch.arange(len(classes), device=logits.device), classes].sigmoid()[:, None]
            else:
                size = 2 * (self.mask_pooler or self.box_roi_pool).output_size
                probs = feats[0].new_zeros((0, 1, size, size))
            for d, p in zip(detections, probs.split([len(b) for b in boxes])):
                d["masks"] = p
        if self.keypoint_on:  # on the detections' boxes, as detectron2's inference
            boxes = [d["boxes"] for d in detections]
            logits = self.keypoint_head(self.keypoint_pooler(feats, boxes))
            for d, k in zip(detections, heatmaps_to_keypoints(logits, torch.cat(boxes)).split([len(b) for b in boxes])):
                d["keypoints"] = k
        return detections, {}


def _pooler(in_features: list[str], strides: dict[str, int], resolution: int, sampling: int,
            pooler_type: str) -> ROIPooler:
    return ROIPooler(resolution, [strides[f] for f in in_features], sampling, pooler_type)


def build_roi_heads(cfg: CfgNode, in_channels: int, strides: dict[str, int],
                    res5: Optional[nn.Sequential], res5_channels: int) -> DetectronRoIHeads:
    h, b, m = cfg.MODEL.ROI_HEADS, cfg.MODEL.ROI_BOX_HEAD, cfg.MODEL.ROI_MASK_HEAD
    in_features = list(h.IN_FEATURES)
    missing = [f for f in in_features if f not in strides]
    if missing:
        raise UserError(f"MODEL.ROI_HEADS.IN_FEATURES {in_features}: the backbone has no {missing} "
                        f"(it gives {list(strides)})")
    if h.NAME not in ROI_HEADS:
        raise UserError(f"MODEL.ROI_HEADS.NAME {h.NAME!r}: the torchvision engine implements {', '.join(ROI_HEADS)}")
    if len(h.IOU_THRESHOLDS) != 1 or list(h.IOU_LABELS) != [0, 1] or not h.PROPOSAL_APPEND_GT:
        raise UserError("MODEL.ROI_HEADS.IOU_THRESHOLDS / IOU_LABELS / PROPOSAL_APPEND_GT: only one "
                        "threshold with labels [0, 1] and appended gt boxes are implemented")
    if b.BBOX_REG_LOSS_TYPE != "smooth_l1" or b.CLS_AGNOSTIC_BBOX_REG or m.CLS_AGNOSTIC_MASK:
        raise UserError("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE / CLS_AGNOSTIC_*: only smooth_l1 and "
                        "class-specific boxes and masks are implemented")
    num_classes = h.NUM_CLASSES
    box_pooler = _pooler(in_features, strides, b.POOLER_RESOLUTION, b.POOLER_SAMPLING_RATIO, b.POOLER_TYPE)
    mask_pooler, mask_channels = None, None
    if h.NAME.startswith("Res5"):
        if res5 is None:
            raise UserError(f"MODEL.ROI_HEADS.NAME {h.NAME}: needs the C4 backbone (RESNETS.OUT_FEATURES ['res4'])")
        extra = get_norm(cfg.MODEL.RESNETS.NORM, res5_channels) if h.NAME == "Res5ROIHeadsExtraNorm" else None
        box_head = Res5BoxHead(res5, extra)
        box_channels = mask_channels = res5_channels
    else:
        if res5 is not None:
            raise UserError("MODEL.ROI_HEADS.NAME StandardROIHeads: needs a backbone that includes res5 "
                            "(FPN or dilated C5), not C4")
        if b.NAME != "FastRCNNConvFCHead":
            raise UserError(f"MODEL.ROI_BOX_HEAD.NAME {b.NAME!r}: StandardROIHeads needs FastRCNNConvFCHead")
        box_head = ConvFCBoxHead(in_channels, b.POOLER_RESOLUTION, b.NUM_CONV, b.CONV_DIM, b.NUM_FC, b.FC_DIM, b.NORM)
        box_channels = box_head.out_channels
        if cfg.MODEL.MASK_ON:
            mask_pooler = _pooler(in_features, strides, m.POOLER_RESOLUTION, m.POOLER_SAMPLING_RATIO, m.POOLER_TYPE)
            mask_channels = in_channels
    keypoint_pooler, keypoint_head = None, None
    if cfg.MODEL.KEYPOINT_ON:
        if h.NAME != "StandardROIHeads":
            raise UserError(f"MODEL.KEYPOINT_ON with MODEL.ROI_HEADS.NAME {h.NAME}: keypoint R-CNN needs "
                            "StandardROIHeads (detectron2's Res5ROIHeads has no keypoint head either)")
        keypoint_pooler, keypoint_head = build_keypoint_branch(cfg, in_features, strides, in_channels)
    mask_head = None
    if cfg.MODEL.MASK_ON:
        if m.NAME != "MaskRCNNConvUpsampleHead":
            raise UserError(f"MODEL.ROI_MASK_HEAD.NAME {m.NAME!r}: only MaskRCNNConvUpsampleHead is implemented")
        mask_head = MaskHead(mask_channels, num_classes, m.NUM_CONV, m.CONV_DIM, m.NORM)
    return DetectronRoIHeads(in_features, box_pooler, box_head, BoxPredictor(box_channels, num_classes),
                             num_classes, cfg, mask_pooler, mask_head, keypoint_pooler, keypoint_head)
