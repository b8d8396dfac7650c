"""A model trained by the torchvision engine, renamed to detectron2's GeneralizedRCNN
parameter names, so detectron2 can evaluate (or fine-tune) it: the cross-engine check.

The torchvision engine builds its heads in detectron2's layout (cls_score with background
LAST, class-specific deltas without a background entry, size-major anchors), so export is a
renaming, never a reordering (torchvision's own FastRCNNPredictor puts background first:
that layout is not what this engine trains). Pure: state dict in, state dict out; no detectron2 import.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch

from mocobench import UserError
from mocobench.resnet import tv_to_d2

SKIP = re.compile(r"\.num_batches_tracked$")
# name prefix in the torchvision engine -> detectron2 (after the trunk / FPN rules)
PREFIXES = (
    ("rpn.head.conv.0.0.", "proposal_generator.rpn_head.conv."),
    ("rpn.head.cls_logits.", "proposal_generator.rpn_head.objectness_logits."),
    ("rpn.head.bbox_pred.", "proposal_generator.rpn_head.anchor_deltas."),
    ("backbone.extra.conv.", "backbone.dc5_conv."),
    ("backbone.extra.norm.", "backbone.dc5_conv.norm."),
    ("roi_heads.box_predictor.", "roi_heads.box_predictor."),
    ("roi_heads.mask_head.deconv.", "roi_heads.mask_head.deconv."),
    ("roi_heads.mask_head.predictor.", "roi_heads.mask_head.predictor."),
    ("roi_heads.keypoint_head.", "roi_heads.keypoint_head."),  # conv_fcn<i>, score_lowres: detectron2's names
    ("sem_seg_head.", "sem_seg_head."),  # the FCN head (semantic segmentation): detectron2's names on both engines
)
# conv (+ norm) blocks built as nn.Sequential(conv, norm, relu) -> detectron2 Conv2d(norm=)
CONV_BLOCK = re.compile(r"^roi_heads\.(box_head\.conv|mask_head\.mask_fcn)(\d+)\.([01])\.")
FPN_BLOCK = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.([01])\.")


def _conv_block(base: str, index: str, rest: str) -> str:
    return f"{base}{'' if index == '0' else '.norm'}.{rest}"


def rename(name: str, fpn_levels: Sequence[int]) -> Optional[str]:
    """detectron2 name for one torchvision-engine parameter/buffer; None if it has none."""
    if SKIP.search(name):
        return None
    for prefix, trunk_prefix in (("backbone.body.", "backbone.bottom_up." if fpn_levels else "backbone."),
                                 ("roi_heads.box_head.res5.", "roi_heads.")):
        if name.startswith(prefix):
            rest = name[len(prefix):]
            if prefix.endswith("res5."):
                return "roi_heads.res5." + rest if rest.startswith("norm.") else trunk_prefix + tv_to_d2("layer4." + rest)
            return trunk_prefix + tv_to_d2(rest)
    m = FPN_BLOCK.match(name)
    if m:
        kind = "lateral" if m.group(1) == "inner" else "output"
        return _conv_block(f"backbone.fpn_{kind}{fpn_levels[int(m.group(2))]}", m.group(3), name[m.end():])
    m = CONV_BLOCK.match(name)
    if m:
        return _conv_block(f"roi_heads.{m.group(1)}{m.group(2)}", m.group(3), name[m.end():])
    if re.match(r"^roi_heads\.box_head\.fc\d+\.", name):
        return name
    for prefix, target in PREFIXES:
        if name.startswith(prefix):
            return target + name[len(prefix):]
    return None


def export_to_detectron2(state: Mapping[str, torch.Tensor], num_classes: int,
                         fpn_in_features: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """detectron2 state dict of a torchvision-engine model. ``fpn_in_features`` is the
    config's MODEL.FPN.IN_FEATURES for an FPN model (they number the FPN levels), else ()."""
    levels = [int(f[3]) for f in fpn_in_features]
    cls = state.get("roi_heads.box_predictor.cls_score.weight")
    if cls is not None and cls.shape[0] != num_classes + 1:
        raise UserError(f"box predictor has {cls.shape[0]} scores, expected {num_classes} classes + background")
    out, unknown = {}, []
    for name, value in state.items():
        target = rename(name, levels)
        if target is None:
            if not SKIP.search(name):
                unknown.append(name)
            continue
        out[target] = value
    if unknown:
        raise UserError(f"not a torchvision-engine detector: no detectron2 name for {unknown[:5]}")
    return out
