"""Keypoint R-CNN on the torchvision engine, as detectron2's StandardROIHeads runs it
(MODEL.KEYPOINT_ON with ROI_KEYPOINT_HEAD.NAME KRCNNConvDeconvUpsampleHead).

Head (``KeypointHead``): ROI_KEYPOINT_HEAD.CONV_DIMS 3x3 convs with ReLU (8 x 512 by default)
on the POOLER_RESOLUTION (14) RoI features, a 4x4 stride-2 transposed conv to NUM_KEYPOINTS
maps, then a 2x bilinear upsample (align_corners False): 56 x 56 heatmap logits per keypoint.
Parameters are named as detectron2 names them (conv_fcn<i>, score_lowres), so the export table
maps them as they are.

Training, as detectron2: the foreground proposals (after sampling) that hold at least one
visible keypoint of their matched instance inside the box (``with_visible_keypoints``) are
pooled; each keypoint's target is the heatmap cell it falls in (``keypoints_to_heatmap``); the
loss is a softmax cross-entropy over the cells, summed over the keypoints that are labelled
and inside the RoI, divided by their count (NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS) or by
images x NUM_KEYPOINTS x ROI_HEADS.BATCH_SIZE_PER_IMAGE x POSITIVE_FRACTION, times LOSS_WEIGHT.
Training images with fewer than MIN_KEYPOINTS_PER_IMAGE labelled keypoints are left out
(``few_keypoints``), and a horizontal flip swaps each left keypoint with its right one
(``flip_indices`` from the datasets' keypoint_flip_map, ``transform_keypoints``).

Inference: the detections' boxes are pooled and each heatmap's maximum, after a bicubic resize
to the box's size, gives the keypoint (``heatmaps_to_keypoints``): x, y and detectron2's score.

torchvision's parts: ``keypoints_to_heatmap`` is torchvision's (the same arithmetic as
detectron2's, line for line); its ``keypointrcnn_loss`` and ``heatmaps_to_keypoints`` are not
used as they are, see ``keypoint_rcnn_loss`` and ``heatmaps_to_keypoints`` below for why.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch import Tensor
from torchvision.models.detection import roi_heads as tv_roi_heads

from mocobench import UserError
from mocobench.transfer.engines.torchvision.pooler import ROIPooler

HEAD_NAME = "KRCNNConvDeconvUpsampleHead"
UP_SCALE = 2.0  # detectron2's default up_scale (not a config key there either)


class KeypointHead(nn.Module):
    """detectron2's KRCNNConvDeconvUpsampleHead: convs, deconv to K maps, 2x bilinear upsample."""

    def __init__(self, in_channels: int, num_keypoints: int, conv_dims: Sequence[int]) -> None:
        super().__init__()
        for i, channels in enumerate(conv_dims, 1):
            self.add_module(f"conv_fcn{i}", nn.Conv2d(in_channels, channels, 3, stride=1, padding=1))
            in_channels = channels
        self.score_lowres = nn.ConvTranspose2d(in_channels, num_keypoints, 4, stride=2, padding=1)
        for name, param in self.named_parameters():  # detectron2's init: MSRA fill, zero biases
            if name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        for name, layer in self.named_children():
            x = layer(x)
            if name.startswith("conv_fcn"):
                x = F.relu(x)
        return F.interpolate(x, scale_factor=UP_SCALE, mode="bilinear", align_corners=False)


def build_keypoint_branch(cfg: CfgNode, in_features: list[str], strides: dict[str, int],
                          in_channels: int) -> tuple[ROIPooler, KeypointHead]:
    """The keypoint pooler (on ROI_HEADS.IN_FEATURES, as detectron2) and head of ``cfg``."""
    k = cfg.MODEL.ROI_KEYPOINT_HEAD
    if k.NAME != HEAD_NAME:
        raise UserError(f"MODEL.ROI_KEYPOINT_HEAD.NAME {k.NAME!r}: the torchvision engine implements {HEAD_NAME}")
    if not k.POOLER_TYPE:
        raise UserError("MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE is empty (the head reads whole feature maps): "
                        "the torchvision engine pools RoIs (ROIAlignV2 or ROIAlign)")
    if k.NUM_KEYPOINTS < 1 or not k.CONV_DIMS:
        raise UserError("MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS / CONV_DIMS: give at least one keypoint and one conv")
    pooler = ROIPooler(k.POOLER_RESOLUTION, [strides[f] for f in in_features], k.POOLER_SAMPLING_RATIO,
                       k.POOLER_TYPE)
    return pooler, KeypointHead(in_channels, k.NUM_KEYPOINTS, list(k.CONV_DIMS))


def loss_normalizer(cfg: CfgNode) -> Optional[float]:
    """Per image: None (divide by the visible keypoints) or NUM_KEYPOINTS x BATCH_SIZE_PER_IMAGE x
    POSITIVE_FRACTION (detectron2's BaseKeypointRCNNHead.from_config)."""
    k, h = cfg.MODEL.ROI_KEYPOINT_HEAD, cfg.MODEL.ROI_HEADS
    if k.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS:
        return None
    return k.NUM_KEYPOINTS * h.BATCH_SIZE_PER_IMAGE * h.POSITIVE_FRACTION


# ---- training -------------------------------------------------------------------------------

def with_visible_keypoints(boxes: Tensor, keypoints: Tensor) -> Tensor:
    """Which RoIs hold a labelled (v >= 1) keypoint of their instance inside the box, borders
    included (detectron2's select_proposals_with_visible_keypoints). ``keypoints``: (N, K, 3)."""
    visible = keypoints[:, :, 2] >= 1
    xs, ys = keypoints[:, :, 0], keypoints[:, :, 1]
    b = boxes[:, None, :]
    inside = (xs >= b[:, :, 0]) & (xs <= b[:, :, 2]) & (ys >= b[:, :, 1]) & (ys <= b[:, :, 3])
    return (inside & visible).any(dim=1)


def keypoints_to_heatmap(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """(N, K) cell index of each keypoint in its RoI's size x size heatmap, and whether it is valid
    (labelled and inside). torchvision's function: it is detectron2's _keypoints_to_heatmap
    statement for statement (half-open RoI, a keypoint on the far border kept in the last cell),
    which tests/test_engine_keypoints.py holds it to."""
    return tv_roi_heads.keypoints_to_heatmap(keypoints, rois, size)


def keypoint_rcnn_loss(logits: Tensor, boxes: list[Tensor], keypoints: list[Tensor],
                       normalizer: Optional[float]) -> Tensor:
    """detectron2's keypoint_rcnn_loss: cross-entropy over each valid keypoint's heatmap, summed,
    divided by ``normalizer`` (None: the number of valid keypoints).

    Not torchvision's keypointrcnn_loss, which always takes the mean over the valid keypoints
    (NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS False divides by a fixed count instead) and fails on a
    batch without foreground RoIs (an empty torch.cat), where detectron2 returns a zero loss."""
    side = logits.shape[2]
    heatmaps, valid = [], []
    for b, kps in zip(boxes, keypoints):
        if len(b) == 0:
            continue
        cells, ok = keypoints_to_heatmap(kps, b, side)
        heatmaps.append(cells.view(-1))
        valid.append(ok.view(-1))
    if heatmaps:
        targets = torch.cat(heatmaps)
        valid_idx = torch.nonzero(torch.cat(valid)).squeeze(1)
    if not heatmaps or valid_idx.numel() == 0:
        return logits.sum() * 0
    n, k, h, w = logits.shape
    loss = F.cross_entropy(logits.reshape(n * k, h * w)[valid_idx].float(), targets[valid_idx], reduction="sum")
    return loss / (valid_idx.numel() if normalizer is None else normalizer)


def few_keypoints(record: dict, minimum: int) -> bool:
    """Fewer than ``minimum`` labelled (v > 0) keypoints over the image's annotations, crowds
    included (detectron2's filter_images_with_few_keypoints counts every annotation with keypoints)."""
    return sum(int((np.asarray(a["keypoints"][2::3]) > 0).sum())
               for a in record.get("annotations", []) if "keypoints" in a) < minimum


# ---- flips ----------------------------------------------------------------------------------

def flip_indices(names: Sequence[str], flip_map: Sequence[Sequence[str]]) -> list[int]:
    """For each keypoint, the index of the one a horizontal flip turns it into (detectron2's
    create_keypoint_hflip_indices: the flip map's pairs, both ways; unpaired keypoints stay)."""
    pairs = {a: b for a, b in flip_map}
    pairs.update({b: a for a, b in flip_map})
    names = list(names)
    return [names.index(pairs.get(n, n)) for n in names]


def dataset_flip_indices(metadatas: Sequence[dict], names: Sequence[str], num_keypoints: int,
                         source: str) -> list[int]:
    """The training datasets' flip indices; their keypoint names and flip maps must agree (detectron2's
    check_metadata_consistency) and count MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS."""
    for name, meta in zip(names, metadatas):
        if "keypoint_names" not in meta:
            raise UserError(f"{source}: MODEL.KEYPOINT_ON is True but dataset {name} has no keypoints "
                            f"(train on keypoints_coco_<year>_<split>)")
    first = metadatas[0]
    for name, meta in zip(names[1:], metadatas[1:]):
        for key in ("keypoint_names", "keypoint_flip_map"):
            if [tuple(x) if isinstance(x, (list, tuple)) else x for x in meta[key]] != \
                    [tuple(x) if isinstance(x, (list, tuple)) else x for x in first[key]]:
                raise UserError(f"{source}: datasets {names[0]} and {name} have different {key}")
    count = len(first["keypoint_names"])
    if count != num_keypoints:
        raise UserError(f"{source}: MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS is {num_keypoints} but {names[0]} "
                        f"has {count} keypoints")
    return flip_indices(first["keypoint_names"], first["keypoint_flip_map"])


def transform_keypoints(keypoints: Sequence[float], sx: float, sy: float, size: tuple[int, int], flip: str,
                        indices: Optional[Sequence[int]]) -> np.ndarray:
    """One instance's [x, y, v] * K in the resized (by ``sx``, ``sy``) and flipped image of ``size``
    (h, w), as detectron2's transform_keypoint_annotations: float64 coordinates; a keypoint that
    leaves the image becomes unlabelled; a horizontal flip reorders the keypoints by ``indices``
    (left <-> right); unlabelled keypoints are (0, 0, 0)."""
    h, w = size
    kps = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    xy = kps[:, :2] * [sx, sy]
    if flip == "horizontal":
        xy[:, 0] = w - xy[:, 0]
    elif flip == "vertical":
        xy[:, 1] = h - xy[:, 1]
    inside = ((xy >= 0) & (xy <= [w, h])).all(axis=1)
    kps[:, :2] = xy
    kps[~inside, 2] = 0
    if flip == "horizontal":
        if indices is None:
            raise UserError("a horizontal flip of keypoints needs the datasets' keypoint_flip_map")
        if len(indices) != len(kps):
            raise UserError(f"an instance has {len(kps)} keypoints but the flip map covers {len(indices)}")
        kps = kps[np.asarray(indices, dtype=np.int64)]
    kps[kps[:, 2] == 0] = 0
    return kps


# ---- inference ------------------------------------------------------------------------------

def heatmaps_to_keypoints(maps: Tensor, rois: Tensor) -> Tensor:
    """(R, K, 3): x, y and score of each keypoint, as detectron2's keypoint_rcnn_inference keeps them
    (its heatmaps_to_keypoints' columns x, y, score).

    x and y come from torchvision's heatmaps_to_keypoints, whose arithmetic is detectron2's (a bicubic
    resize to the box's ceiled size, the argmax, the cell's centre scaled back). Its third value is the
    resized map's maximum logit, where detectron2 reports that cell's softmax over the heatmap at its
    pooled resolution, exp(max - max) / sum(exp(map - max)), which is exp(max - logsumexp(map)): computed
    here from the maximum torchvision returns, in the form that stays finite where the resize overshoots the
    pooled map by more than exp's range (detectron2's sum then underflows to 0 and its check asserts)."""
    if rois.shape[0] == 0:
        return maps.new_zeros((0, maps.shape[1], 3), dtype=torch.float32)
    maps = maps.float()
    xy, best = tv_roi_heads.heatmaps_to_keypoints(maps, rois.float())
    scores = (best - maps.flatten(2).logsumexp(dim=2)).exp()
    return torch.cat([xy[:, :, :2], scores[:, :, None]], dim=2)
