"""The torchvision engine against detectron2 on one config, component by component.

Both models are built from the config; detectron2's gets ours' weights through the export
table. Both see the same synthetic images and targets, prepared by our data pipeline, with every anchor and every proposal
sampled (batch sizes above the candidates, positive fraction 1), so sampling is
deterministic. Compared: precise-BN statistics (train-mode BN), then with BN in eval mode
every training loss and the gradients, then inference (boxes, scores, classes, pasted masks,
keypoints). Keypoint configs give each object keypoints (some hidden, unlabelled or outside).
Needs detectron2; imported only when it is there.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints, PolygonMasks
from detectron2.utils.events import EventStorage
from fvcore.nn.precise_bn import update_bn_stats as fvcore_update_bn_stats
from PIL import Image
from torch import Tensor

from mocobench import UserError
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.datasets.person_keypoints import KEYPOINT_NAMES, flip_map
from mocobench.transfer.engines.detectron2.config import load_d2_config
from mocobench.transfer.engines.detectron2.trainer import Trainer
from mocobench.transfer.engines.export import export_to_detectron2, rename
from mocobench.transfer.engines.torchvision.build import DetectronRCNN, build_model
from mocobench.transfer.engines.torchvision.inference import postprocess
from mocobench.transfer.engines.torchvision.input import TrainMapper
from mocobench.transfer.engines.torchvision.keypoints import flip_indices
from mocobench.transfer.engines.torchvision.masks import Polygons
from mocobench.transfer.engines.torchvision.norm import batch_norms
from mocobench.transfer.engines.torchvision.precise_bn import update_bn_stats

DETERMINISTIC = ("MODEL.RPN.BATCH_SIZE_PER_IMAGE", "1000000", "MODEL.RPN.POSITIVE_FRACTION", "1.0",
                 "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0",
                 "MODEL.DEVICE", "cpu")
LOSS_NAMES = {"loss_objectness": "loss_rpn_cls", "loss_rpn_box_reg": "loss_rpn_loc", "loss_cls": "loss_cls",
              "loss_box_reg": "loss_box_reg", "loss_mask": "loss_mask", "loss_keypoint": "loss_keypoint"}
TOLERANCE = {"loss": 1e-5, "grad backbone": 1e-4, "grad heads": 1e-4, "precise BN": 1e-4,
             "boxes": 1e-4, "scores": 1e-4, "classes": 0.0, "masks": 1e-3, "detections": 0.0,
             "keypoints": 1e-4, "keypoint scores": 1e-4}
PRECISE_BN_BATCHES = 2
# a softmax over the heatmap ignores a constant added to it: the keypoint deconv's bias gets a gradient
# of pure rounding noise (~1e-8) in both engines, whose relative difference means nothing
SHIFT_INVARIANT = ("roi_heads.keypoint_head.score_lowres.bias",)


@dataclass
class Row:
    component: str
    ours: float
    detectron2: float
    difference: float  # relative, except counts of differing classes / detections and the masks' pixel fraction
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.difference <= self.tolerance


def relative(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||b|| (0 when both are 0)."""
    a, b = a.double(), b.double()
    diff, norm = float((a - b).norm()), float(b.norm())
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def synthetic_batch(cfg, seed: int = 0) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """Two noise images (one wide, one tall: the batch pads), three polygon objects each,
    through our TrainMapper (resize, flip, float32 boxes, masks as INPUT.MASK_FORMAT keeps
    them: polygons, or full-image bitmasks; keypoints moved, flipped and swapped): the inputs both engines then see."""
    g = torch.Generator().manual_seed(seed)
    num_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS if cfg.MODEL.KEYPOINT_ON else 0
    mapper = TrainMapper(cfg, cfg.MODEL.MASK_ON, synthetic_flip_indices(num_keypoints))
    images, targets = [], []
    with tempfile.TemporaryDirectory() as folder:
        for k, (h, w) in enumerate(((150, 200), (190, 150))):
            path = Path(folder) / f"{k}.png"
            Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
            record = {"file_name": str(path), "height": h, "width": w, "image_id": k,
                      "annotations": [ellipse(g, w, h, cfg.MODEL.ROI_HEADS.NUM_CLASSES, num_keypoints)
                                      for _ in range(3)]}
            image, target = mapper(record, np.random.default_rng([seed, k]))
            images.append(image)
            targets.append(target)
    return images, targets


def synthetic_flip_indices(num_keypoints: int) -> list[int] | None:
    """COCO's person flip map for 17 keypoints; none swapped for another count; None without keypoints."""
    if num_keypoints == len(KEYPOINT_NAMES):
        return flip_indices(KEYPOINT_NAMES, flip_map(KEYPOINT_NAMES))
    return list(range(num_keypoints)) if num_keypoints else None


def ellipse(g: torch.Generator, w: int, h: int, num_classes: int, num_keypoints: int = 0) -> dict:
    """An annotation: a 16-gon ellipse at a random place, its box, a random class; with
    ``num_keypoints``, keypoints around the box (a fifth unlabelled, a fifth hidden, some outside
    the box, so some RoIs hold none)."""
    corner = torch.rand(2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
    size = (torch.rand(2, generator=g) * 0.3 + 0.1) * torch.tensor([w, h])
    centre, radius = corner + size / 2, size / 2
    angles = torch.arange(16) * (2 * math.pi / 16)
    xs, ys = centre[0] + radius[0] * angles.cos(), centre[1] + radius[1] * angles.sin()
    annotation = {"bbox": [float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())],
                  "category_id": int(torch.randint(num_classes, (1,), generator=g)), "iscrowd": 0,
                  "segmentation": [torch.stack([xs, ys], 1).flatten().tolist()]}
    if num_keypoints:
        xy = corner + (torch.rand(num_keypoints, 2, generator=g) * 1.4 - 0.2) * size
        v = torch.multinomial(torch.tensor([0.2, 0.2, 0.6]), num_keypoints, replacement=True, generator=g)
        kps = torch.cat([xy, v[:, None].float()], 1)
        kps[v == 0] = 0
        annotation["keypoints"] = kps.flatten().tolist()
    return annotation


def detectron2_inputs(images: list[Tensor], targets: list[dict[str, Tensor]], mask_on: bool) -> list[dict]:
    inputs = []
    for im, t in zip(images, targets):
        fields = {"gt_boxes": Boxes(t["boxes"]), "gt_classes": t["labels"] - 1}
        if mask_on:
            masks = t["masks"]
            fields["gt_masks"] = PolygonMasks(masks.instances) if isinstance(masks, Polygons) else BitMasks(masks.bool())
        if "keypoints" in t:
            fields["gt_keypoints"] = Keypoints(t["keypoints"])
        inputs.append({"image": im, "instances": Instances(tuple(im.shape[-2:]), **fields)})
    return inputs


def fpn_features(cfg) -> list[str]:
    """The FPN's input stages (they number its levels in detectron2's names); [] without FPN."""
    return list(cfg.MODEL.FPN.IN_FEATURES) if "fpn" in cfg.MODEL.BACKBONE.NAME else []


@dataclass
class Pair:
    ours: DetectronRCNN
    detectron2: nn.Module
    cfg: object
    exported: dict[str, str]  # our parameter/buffer name -> detectron2's

    def copy_weights(self) -> None:
        """detectron2's model := ours, by the export table; every tensor must have a place."""
        cfg = self.cfg
        state = export_to_detectron2(self.ours.state_dict(), cfg.MODEL.ROI_HEADS.NUM_CLASSES, fpn_features(cfg))
        load_exported(self.detectron2, state)


def load_exported(model: nn.Module, state: dict) -> None:
    """``model`` := ``state`` (our weights by the export table); every tensor must have a place
    (BN's num_batches_tracked aside)."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise UserError(f"export table and detectron2's model disagree: missing {missing[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")


def build_pair(config: str, overrides: Sequence[str] = (), seed: int = 0) -> Pair:
    """Both models of ``config``; the box and mask predictors are re-drawn wider than their
    init so scores are far apart and mask probabilities far from 0.5: NMS, top-k and the mask
    threshold then do not hinge on rounding; the keypoint deconv is scaled down (see there)."""
    opts = [*overrides, *DETERMINISTIC]
    cfg = load_detection_config(config, opts)
    torch.manual_seed(seed)
    ours = build_model(cfg)
    with torch.no_grad():
        ours.roi_heads.box_predictor.cls_score.weight.normal_(0, 0.5)
        ours.roi_heads.box_predictor.bbox_pred.weight.normal_(0, 0.05)
        if ours.roi_heads.mask_head is not None:
            ours.roi_heads.mask_head.predictor.weight.normal_(0, 0.3)
        if ours.roi_heads.keypoint_head is not None:  # logits of a few units: a bicubic resize overshooting the
            ours.roi_heads.keypoint_head.score_lowres.weight.mul_(0.02)  # map past exp's range trips detectron2
    theirs = Trainer.build_model(load_d2_config(str(config), opts))
    levels = [int(f[3]) for f in fpn_features(cfg)]
    names = {k: rename(k, levels) for k in ours.state_dict()}
    pair = Pair(ours, theirs, cfg, {k: v for k, v in names.items() if v is not None})
    pair.copy_weights()
    return pair


def compare_precise_bn(pair: Pair, images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Row]:
    """Both engines' precise BN over the same batches (the image set, then mirrored)."""
    batches = [(images, targets), ([im.flip(-1) for im in images], [mirror(t, im.shape[-1]) for t, im in zip(targets, images)])]
    mask_on = pair.cfg.MODEL.MASK_ON
    pair.ours.train()
    pair.detectron2.train()
    used = update_bn_stats(pair.ours, iter(batches), lambda b: pair.ours(*b), PRECISE_BN_BATCHES)
    if used == 0:
        return []
    with EventStorage():
        fvcore_update_bn_stats(pair.detectron2, (detectron2_inputs(*b, mask_on) for b in batches), PRECISE_BN_BATCHES)
    ours_state, theirs_state = pair.ours.state_dict(), pair.detectron2.state_dict()
    keys = [k for k in ours_state if k.endswith(("running_mean", "running_var"))
            and any(k.startswith(n) for n in bn_names(pair.ours))]
    worst = max(keys, key=lambda k: relative(ours_state[k], theirs_state[pair.exported[k]]))
    a, b = ours_state[worst], theirs_state[pair.exported[worst]]
    return [Row(f"precise BN ({len(keys)} buffers)", float(a.norm()), float(b.norm()), relative(a, b),
                TOLERANCE["precise BN"])]


def bn_names(model: nn.Module) -> list[str]:
    bns = {id(m) for m in batch_norms(model)}
    return [name + "." for name, m in model.named_modules() if id(m) in bns]


def mirror(target: dict[str, Tensor], width: int) -> dict[str, Tensor]:
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    flipped = {**target, "boxes": boxes}
    if "masks" in target:
        masks = target["masks"]
        flipped["masks"] = masks.flipped(0, width) if isinstance(masks, Polygons) else masks.flip(-1)
    if "keypoints" in target:  # mirrored in place (no left/right swap: precise BN reads no keypoint's name)
        kps = target["keypoints"].clone()
        kps[:, :, 0] = width - kps[:, :, 0]
        kps[kps[:, :, 2] == 0] = 0
        flipped["keypoints"] = kps
    return flipped


def eval_norms(model: nn.Module) -> None:
    """Training mode with every BN on its running statistics: the loss is then a function of
    the weights alone, not of how each engine batches the RoIs through BN."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def compare_training(pair: Pair, images: list[Tensor], targets: list[dict[str, Tensor]]) -> list[Row]:
    for model in (pair.ours, pair.detectron2):
        eval_norms(model)
        model.zero_grad(set_to_none=True)
    ours = pair.ours(images, targets)
    with EventStorage():
        theirs = pair.detectron2(detectron2_inputs(images, targets, pair.cfg.MODEL.MASK_ON))
    rows = []
    for name, value in ours.items():
        ref = theirs[LOSS_NAMES[name]]
        rows.append(Row(f"{name} / {LOSS_NAMES[name]}", float(value.detach()), float(ref.detach()),
                        relative(value.detach(), ref.detach()), TOLERANCE["loss"]))
    sum(ours.values()).backward()
    sum(theirs.values()).backward()
    params = dict(pair.detectron2.named_parameters())
    worst: dict[str, tuple[float, str]] = {}
    for name, p in pair.ours.named_parameters():
        if p.grad is None or name in SHIFT_INVARIANT:
            continue
        part = "grad backbone" if pair.exported[name].startswith("backbone.") else "grad heads"
        ref = params[pair.exported[name]].grad
        rel = relative(p.grad, ref)
        if rel >= worst.get(part, (-1.0, ""))[0]:
            worst[part] = (rel, name)
    for part, (rel, name) in sorted(worst.items()):
        ref = params[pair.exported[name]].grad
        rows.append(Row(f"{part} (worst: {name})", float(dict(pair.ours.named_parameters())[name].grad.norm()),
                        float(ref.norm()), rel, TOLERANCE[part]))
    return rows


@torch.no_grad()
def compare_inference(pair: Pair, images: list[Tensor]) -> list[Row]:
    pair.ours.eval()
    pair.detectron2.eval()
    ours = [postprocess(d, tuple(im.shape[-2:]), tuple(im.shape[-2:])) for d, im in zip(pair.ours(images), images)]
    theirs = [o["instances"] for o in pair.detectron2(
        [{"image": im, "height": im.shape[-2], "width": im.shape[-1]} for im in images])]
    n_ours, n_theirs = sum(len(d["boxes"]) for d in ours), sum(len(t) for t in theirs)
    rows = [Row("detections", n_ours, n_theirs, abs(n_ours - n_theirs), TOLERANCE["detections"])]
    if n_ours != n_theirs or any(len(d["boxes"]) != len(t) for d, t in zip(ours, theirs)):
        return rows
    cat = torch.cat
    pairs = {"boxes": (cat([d["boxes"] for d in ours]), cat([t.pred_boxes.tensor for t in theirs])),
             "scores": (cat([d["scores"] for d in ours]), cat([t.scores for t in theirs]))}
    for name, (a, b) in pairs.items():
        rows.append(Row(name, float(a.norm()), float(b.norm()), relative(a, b), TOLERANCE[name]))
    a, b = cat([d["labels"] for d in ours]), cat([t.pred_classes for t in theirs])
    rows.append(Row("classes (differing)", len(a), len(b), float((a != b).sum()), TOLERANCE["classes"]))
    if pair.cfg.MODEL.MASK_ON and n_ours:
        a = cat([d["masks"].flatten() for d in ours])
        b = cat([t.pred_masks.flatten() for t in theirs])
        rows.append(Row("masks (pixels differing)", float(a.sum()), float(b.sum()),
                        float((a != b).float().mean()), TOLERANCE["masks"]))
    if pair.cfg.MODEL.KEYPOINT_ON and n_ours:
        a = cat([d["keypoints"] for d in ours])
        b = cat([t.pred_keypoints for t in theirs])
        for name, part in (("keypoints", slice(0, 2)), ("keypoint scores", slice(2, 3))):
            rows.append(Row(f"{name}" + (" (x, y)" if name == "keypoints" else ""), float(a[:, :, part].norm()),
                            float(b[:, :, part].norm()), relative(a[:, :, part], b[:, :, part]), TOLERANCE[name]))
    return rows


def check_parity(config: str, overrides: Sequence[str] = (), seed: int = 0) -> list[Row]:
    """Every comparison on ``config`` (KEY VALUE ``overrides`` applied to both engines)."""
    pair = build_pair(config, overrides, seed)
    images, targets = synthetic_batch(pair.cfg, seed)
    rows = compare_precise_bn(pair, images, targets)
    pair.copy_weights()  # both now hold our precise-BN statistics
    rows += compare_training(pair, images, targets)
    rows += compare_inference(pair, images)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    lines = [f"{'component':<58} {'ours':>13} {'detectron2':>13} {'difference':>11} {'tolerance':>9}  ok"]
    for r in rows:
        lines.append(f"{r.component:<58} {r.ours:>13.6g} {r.detectron2:>13.6g} {r.difference:>11.2e} "
                     f"{r.tolerance:>9.0e}  {'yes' if r.ok else 'NO'}")
    return "\n".join(lines)
