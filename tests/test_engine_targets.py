"""Training targets of the torchvision engine, without detectron2: each RoI's mask target
is cropped from the instance that RoI matched, and every target tensor is float32."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from engine_fixtures import DEMO, TINY
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.torchvision.build import build_model
from mocobench.transfer.engines.torchvision.input import TrainMapper
from mocobench.transfer.engines.torchvision.roi_heads import mask_targets

# two instances in one 64 x 80 image, far apart: a left-half mask and a full-box mask
BOX_A, BOX_B = [4.0, 4.0, 28.0, 28.0], [44.0, 30.0, 76.0, 60.0]


def two_instance_masks() -> torch.Tensor:
    masks = torch.zeros(2, 64, 80, dtype=torch.uint8)
    masks[0, 4:28, 4:16] = 1  # left half of box A
    masks[1, 30:60, 44:76] = 1  # all of box B
    return masks


def test_mask_target_comes_from_each_rois_own_instance():
    masks = two_instance_masks()
    boxes = torch.tensor([BOX_B, BOX_A, BOX_A])
    targets = mask_targets([boxes], [masks], [torch.tensor([1, 0, 0])], 14)
    assert targets.dtype == torch.float32 and targets.shape == (3, 14, 14)
    assert targets[0].all()  # box B cropped from instance 1: full
    for t in targets[1:]:  # box A cropped from instance 0: left half only
        assert t[:, :7].all() and not t[:, 7:].any()


def test_mask_targets_of_two_images_keep_their_images():
    masks = two_instance_masks()
    other = torch.zeros(1, 64, 80, dtype=torch.uint8)
    targets = mask_targets([torch.tensor([BOX_A]), torch.tensor([BOX_A])], [masks, other],
                           [torch.tensor([0]), torch.tensor([0])], 14)
    assert targets[0, :, :7].all() and not targets[1].any()


def test_model_matches_rois_to_their_instances():
    """The model's own sampling: RoIs on each gt box match that box's instance."""
    torch.manual_seed(0)
    cfg = load_detection_config(DEMO / "demo_coco_C4_mask.yaml", TINY)
    heads = build_model(cfg).roi_heads
    target = {"boxes": torch.tensor([BOX_A, BOX_B]), "labels": torch.tensor([1, 3]), "masks": two_instance_masks()}
    proposals = [torch.tensor([BOX_B, BOX_A, [0.0, 40.0, 20.0, 63.0]])]
    rois, matched, labels, regression = heads.select_training_samples(proposals, [target])
    fg = labels[0] > 0
    crops = mask_targets([rois[0][fg]], [target["masks"]], [matched[0][fg]], 14)
    left_half = torch.zeros(14, 14)
    left_half[:, :7] = 1
    for box, crop in zip(rois[0][fg].tolist(), crops):
        assert torch.equal(crop, left_half if box == BOX_A else torch.ones(14, 14))
    assert regression[0].dtype == torch.float32 and crops.dtype == torch.float32


def test_train_mapper_targets_are_float32(tmp_path):
    """float64 gt boxes change which anchors tie for an object's best IoU (the RPN keeps ties)."""
    path = tmp_path / "im.jpg"
    Image.new("RGB", (90, 70), (40, 80, 120)).save(path)
    record = {"file_name": str(path), "height": 70, "width": 90, "image_id": 1, "annotations": [
        {"bbox": [3.3, 5.1, 41.7, 33.9], "category_id": 0, "iscrowd": 0,
         "segmentation": [[3.3, 5.1, 41.7, 5.1, 41.7, 33.9, 3.3, 33.9]]},
        {"bbox": [50.2, 20.6, 88.9, 69.0], "category_id": 2, "iscrowd": 0,
         "segmentation": [[50.2, 20.6, 88.9, 20.6, 88.9, 69.0]]}]}
    cfg = load_detection_config(DEMO / "demo_coco_C4_mask.yaml",
                                TINY + ["INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.RANDOM_FLIP", "none"])
    image, target = TrainMapper(cfg, mask_on=True)(record, np.random.default_rng(0))
    assert image.dtype == torch.float32 and target["boxes"].dtype == torch.float32
    h, w = image.shape[-2:]
    expected = np.asarray([a["bbox"] for a in record["annotations"]], np.float64) * ([w / 90, h / 70] * 2)
    assert torch.equal(target["boxes"], torch.from_numpy(expected.clip(0, [w, h, w, h]).astype(np.float32)))
    assert target["masks"].shape == (2, *image.shape[-2:])
