"""Run a detector over a test set and turn its outputs into COCO-format detections
(docs/DESIGN.md, "Detections file"): boxes back in the original image's pixels, masks pasted and RLE-encoded,
keypoints scaled with the boxes and given as COCO's pixel indices,
category ids mapped back to the dataset's own ids. Ranks take every world-th image and the
detections are gathered to rank 0."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from pycocotools import mask as mask_util
from torch import Tensor
from torchvision.ops import clip_boxes_to_image

from mocobench import dist as mdist
from mocobench.transfer.engines.torchvision.input import test_input

MASK_THRESHOLD = 0.5  # detectron2's detector_postprocess default


def paste_masks(probs: Tensor, boxes: Tensor, image_hw: tuple[int, int]) -> Tensor:
    """(N, M, M) mask probabilities -> (N, H, W) bool masks, as detectron2's paste_masks_in_image:
    each pixel centre samples its box's mask bilinearly (zero outside the mask), then >= 0.5."""
    h, w = image_hw
    out = torch.zeros((len(probs), h, w), dtype=torch.bool, device=probs.device)
    for i, (mask, box) in enumerate(zip(probs.float(), boxes.float())):
        x0, y0, x1, y1 = box
        # a pixel centre outside the box samples at most half the edge value, below the
        # threshold, so only the box's pixels and a one-pixel rim are sampled
        c0, r0 = max(math.floor(float(x0)) - 1, 0), max(math.floor(float(y0)) - 1, 0)
        c1, r1 = min(math.ceil(float(x1)) + 1, w), min(math.ceil(float(y1)) + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        xs = (torch.arange(c0, c1, dtype=torch.float32, device=probs.device) + 0.5 - x0) / (x1 - x0) * 2 - 1
        ys = (torch.arange(r0, r1, dtype=torch.float32, device=probs.device) + 0.5 - y0) / (y1 - y0) * 2 - 1
        grid = torch.stack([xs[None, :].expand(len(ys), -1), ys[:, None].expand(-1, len(xs))], dim=-1)
        sampled = F.grid_sample(mask[None, None], grid[None], align_corners=False)[0, 0]
        out[i, r0:r1, c0:c1] = sampled >= MASK_THRESHOLD
    return out


def postprocess(det: dict[str, Tensor], input_hw: tuple[int, int], output_hw: tuple[int, int]) -> dict[str, Tensor]:
    """Detections on the resized input -> on an output_hw image, as detectron2's
    detector_postprocess: boxes scaled and clipped, boxes left without area dropped, masks
    pasted (bool, H x W), keypoints' x and y scaled (before the filter, as detectron2)."""
    h, w = output_hw
    boxes = det["boxes"].float().clone()
    boxes[:, 0::2] *= w / input_hw[1]
    boxes[:, 1::2] *= h / input_hw[0]
    boxes = clip_boxes_to_image(boxes, (h, w))
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    out = {"boxes": boxes[keep], "scores": det["scores"][keep], "labels": det["labels"][keep]}
    if "masks" in det:
        out["masks"] = paste_masks(det["masks"][keep][:, 0], out["boxes"], (h, w))
    if "keypoints" in det:
        kps = det["keypoints"].float().clone()
        kps[:, :, 0] *= w / input_hw[1]
        kps[:, :, 1] *= h / input_hw[0]
        out["keypoints"] = kps[keep]
    return out


def to_results(det: dict, record: dict, input_hw: tuple[int, int], contiguous_to_id: dict[int, int]) -> list[dict]:
    det = {k: v.cpu() for k, v in postprocess(det, input_hw, (record["height"], record["width"])).items()}
    rles = None
    if "masks" in det:
        rles = [mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in det["masks"]]
    out = []
    for i, (box, score, label) in enumerate(zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())):
        x0, y0, x1, y1 = box
        res = {"image_id": record["image_id"], "category_id": contiguous_to_id[label],
               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        if rles is not None:
            res["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
        if "keypoints" in det:  # continuous coordinates -> COCO's pixel indices (detectron2's instances_to_coco_json)
            kps = det["keypoints"][i].clone()
            kps[:, :2] -= 0.5
            res["keypoints"] = kps.flatten().tolist()
        out.append(res)
    return out


@torch.no_grad()
def run_inference(model: nn.Module, cfg: CfgNode, records: list[dict], metadata: dict,
                  device: torch.device) -> list[dict] | None:
    """All ranks call this; rank 0 gets the detections of every image, others None."""
    contiguous_to_id = {v: k for k, v in metadata["thing_dataset_id_to_contiguous_id"].items()}
    was_training = model.training
    model.eval()
    mine = []
    for record in records[mdist.rank()::mdist.world_size()]:
        image = test_input(record, cfg)
        det = model([image.to(device)])[0]
        mine.extend(to_results(det, record, tuple(image.shape[-2:]), contiguous_to_id))
    model.train(was_training)
    if mdist.world_size() == 1:
        return mine
    gathered = [None] * mdist.world_size() if mdist.is_main() else None
    dist.gather_object(mine, gathered, dst=0)
    return [d for part in gathered for d in part] if mdist.is_main() else None
