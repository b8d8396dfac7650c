"""Run a detector over a test set and turn its outputs into COCO-format detections
(docs/DESIGN.md, "Detections file"): boxes back in the original image's pixels, masks pasted and RLE-encoded,
category ids mapped back to the dataset's own ids. Ranks take every world-th image and the
detections are gathered to rank 0."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from fvcore.common.config import CfgNode
from pycocotools import mask as mask_util
from torchvision.models.detection.roi_heads import paste_masks_in_image

from mocobench import dist as mdist
from mocobench.transfer.engines.torchvision.input import test_input


def to_results(det: dict, record: dict, input_hw: tuple[int, int], contiguous_to_id: dict[int, int]) -> list[dict]:
    h, w = record["height"], record["width"]
    sy, sx = h / input_hw[0], w / input_hw[1]
    boxes = det["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
    scores, labels = det["scores"].cpu().tolist(), det["labels"].cpu().tolist()
    rles = None
    if "masks" in det and len(boxes):
        masks = paste_masks_in_image(det["masks"].float().cpu(), boxes, (h, w))[:, 0] > 0.5
        rles = [mask_util.encode(np.asfortranarray(m.numpy().astype(np.uint8))) for m in masks]
    out = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels)):
        x0, y0, x1, y1 = box
        res = {"image_id": record["image_id"], "category_id": contiguous_to_id[label],
               "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        if rles is not None:
            res["segmentation"] = {"size": list(rles[i]["size"]), "counts": rles[i]["counts"].decode("ascii")}
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
