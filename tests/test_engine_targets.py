"""Training targets of the torchvision engine, without detectron2: each RoI's mask target
is made from the instance that RoI matched (polygons rasterised in the RoI, or bitmasks
cropped, by INPUT.MASK_FORMAT), and every target tensor is float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from engine_fixtures import DEMO, TINY
from mocobench import UserError
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
    assert len(target["masks"]) == 2  # polygons: INPUT.MASK_FORMAT's default


# in a 90 x 70 image: a slanted triangle (edges a crop of a full-image raster gets wrong) and
# an instance of two squares (one mask: their union)
TRIANGLE = [12.0, 10.0, 40.5, 18.0, 20.0, 44.0]
SQUARES = [[55.0, 20.0, 70.0, 20.0, 70.0, 35.0, 55.0, 35.0], [72.0, 38.0, 85.0, 38.0, 85.0, 50.0, 72.0, 50.0]]


def polygon_record(tmp_path, segmentations: list) -> dict:
    path = tmp_path / "im.png"
    Image.new("RGB", (90, 70)).save(path)
    annotations = []
    for segm in segmentations:
        xy = np.concatenate([np.reshape(p, (-1, 2)) for p in segm])
        annotations.append({"bbox": [*xy.min(0).tolist(), *xy.max(0).tolist()], "category_id": 1, "iscrowd": 0,
                            "segmentation": segm})
    return {"file_name": str(path), "height": 70, "width": 90, "image_id": 1, "annotations": annotations}


def mapped(record: dict, *overrides: str, seed: int = 0) -> dict:
    """The record through the C4-mask config's TrainMapper at its own size (70), unflipped unless overridden."""
    cfg = load_detection_config(DEMO / "demo_coco_C4_mask.yaml",
                                TINY + ["INPUT.MIN_SIZE_TRAIN", "(70,)", "INPUT.RANDOM_FLIP", "none", *overrides])
    return TrainMapper(cfg, mask_on=True)(record, np.random.default_rng(seed))[1]


def rasterised_in(polygons: list[list[float]], box: list[float], size: int) -> torch.Tensor:
    """pycocotools on the polygons with the box's corner moved to 0 and its sides scaled to ``size``."""
    x0, y0, x1, y1 = box
    moved = [[(v - x0) * size / (x1 - x0) if i % 2 == 0 else (v - y0) * size / (y1 - y0) for i, v in enumerate(p)]
             for p in polygons]
    return torch.from_numpy(mask_util.decode(mask_util.merge(mask_util.frPyObjects(moved, size, size)))).float()


def test_polygon_mask_target_is_the_polygon_rasterised_in_each_roi(tmp_path):
    """INPUT.MASK_FORMAT polygon (the default), as detectron2's PolygonMasks: a RoI's target is
    its instance's polygons cropped and scaled to the RoI, rasterised at the target's size."""
    target = mapped(polygon_record(tmp_path, [[TRIANGLE], SQUARES]))
    rois = torch.tensor([[12.0, 10.0, 40.5, 44.0], [16.5, 14.0, 30.0, 27.5], [58.0, 18.0, 84.0, 48.5], [55.0, 20.0, 85.0, 50.0]])
    matched = torch.tensor([0, 0, 1, 1])
    crops = mask_targets([rois], [target["masks"]], [matched], 28)
    for roi, instance, crop in zip(rois.tolist(), matched.tolist(), crops):
        polygons = [TRIANGLE] if instance == 0 else SQUARES
        assert torch.equal(crop, rasterised_in(polygons, roi, 28)), roi
    assert crops[3, :10, :10].all() and not crops[3, 20:, :10].any()  # a square, and the gap beside the other


def test_polygons_flip_with_the_image(tmp_path):
    """A horizontal flip mirrors the polygon's x about the image's width before it is rasterised."""
    target = mapped(polygon_record(tmp_path, [[TRIANGLE]]), "INPUT.RANDOM_FLIP", "horizontal", seed=3)  # draws a flip
    box = target["boxes"][0]
    assert box.tolist() == [90.0 - 40.5, 10.0, 90.0 - 12.0, 44.0]
    mirrored = [90.0 - v if i % 2 == 0 else v for i, v in enumerate(TRIANGLE)]
    crop = mask_targets([box[None]], [target["masks"]], [torch.tensor([0])], 28)[0]
    assert torch.equal(crop, rasterised_in([mirrored], box.tolist(), 28))


def test_bitmask_format_crops_full_image_masks(tmp_path):
    """INPUT.MASK_FORMAT bitmask, as detectron2's BitMasks: full-image masks, cropped with roi_align."""
    target = mapped(polygon_record(tmp_path, [[TRIANGLE], SQUARES]), "INPUT.MASK_FORMAT", "bitmask")
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (2, 70, 90)
    full = mask_util.decode(mask_util.merge(mask_util.frPyObjects(SQUARES, 70, 90)))
    assert torch.equal(masks[1], torch.from_numpy(full))
    box = torch.tensor([[12.0, 10.0, 40.5, 44.0]])
    assert torch.equal(mask_targets([box], [masks], [torch.tensor([0])], 28),
                       mask_targets([box], [masks[:1]], [torch.tensor([0])], 28))


def test_rle_instance_under_polygon_format_is_refused_in_one_line(tmp_path):
    record = polygon_record(tmp_path, [[TRIANGLE]])
    record["annotations"][0]["segmentation"] = mask_util.encode(np.asfortranarray(np.ones((70, 90), np.uint8)))
    with pytest.raises(UserError, match=r"im.png: .* RLE, which INPUT.MASK_FORMAT polygon cannot hold; "
                                        r"set INPUT.MASK_FORMAT bitmask$"):
        mapped(record)
    assert mapped(record, "INPUT.MASK_FORMAT", "bitmask")["masks"].all()
