"""The torchvision engine's model: every architecture trains and predicts, with detectron2's
layout where weights must map name-for-name, and refuses what it cannot honour."""

from __future__ import annotations

import pytest
import torch

from engine_fixtures import DEMO, TINY
from moco_configs import write_moco_voc_configs
from mocobench import UserError
from mocobench.transfer.config import detection_defaults, load_detection_config
from mocobench.transfer.engines.torchvision.build import build_model
from mocobench.transfer.engines.torchvision.norm import SyncBatchNorm2d
from mocobench.transfer.engines.torchvision.supported import check_supported

ARCHS = ["demo_voc_C4", "demo_voc_DC5", "demo_coco_FPN_mask", "demo_coco_C4_mask"]


def _batch(mask: bool):
    images = [torch.rand(3, 64, 80) * 255, torch.rand(3, 72, 64) * 255]
    targets = []
    for h, w, boxes, labels in ((64, 80, [[10., 8, 50, 40], [40, 30, 78, 60]], [1, 4]), (72, 64, [[5., 5, 40, 50]], [2])):
        t = {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels)}
        if mask:
            m = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
            for i, (x0, y0, x1, y1) in enumerate(boxes):
                m[i, int(y0):int(y1), int(x0):int(x1)] = 1
            t["masks"] = m
        targets.append(t)
    return images, targets


@pytest.mark.parametrize("arch", ARCHS)
def test_trains_and_predicts(arch):
    torch.manual_seed(0)
    cfg = load_detection_config(DEMO / f"{arch}.yaml", TINY)
    check_supported(cfg, detection_defaults(), arch)
    model = build_model(cfg)
    images, targets = _batch(cfg.MODEL.MASK_ON)
    losses = model(images, targets)
    expected = {"loss_objectness", "loss_rpn_box_reg", "loss_cls", "loss_box_reg"} | (
        {"loss_mask"} if cfg.MODEL.MASK_ON else set())
    assert set(losses) == expected
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.roi_heads.box_predictor.parameters())
    model.eval()
    with torch.no_grad():
        dets = model(images)
    for d, im in zip(dets, images):
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) <= cfg.TEST.DETECTIONS_PER_IMAGE
        assert ((d["labels"] >= 0) & (d["labels"] < 4)).all()
        assert (d["boxes"][:, 2] <= im.shape[-1]).all() and (d["boxes"][:, 3] <= im.shape[-2]).all()
        if cfg.MODEL.MASK_ON:
            assert d["masks"].shape[0] == len(d["boxes"])


def test_detectron2_layout():
    """Background last (K+1 scores), class-specific deltas without background, anchors
    size-major without rounding, ROIAlignV2 (aligned) pooling, extra norm after res5."""
    cfg = load_detection_config(DEMO / "demo_voc_C4.yaml", TINY)
    model = build_model(cfg)
    pred = model.roi_heads.box_predictor
    assert pred.cls_score.out_features == 5 and pred.bbox_pred.out_features == 16
    assert model.roi_heads.box_roi_pool.aligned
    assert model.roi_heads.box_roi_pool.output_size == cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    assert hasattr(model.roi_heads.box_head.res5, "norm")
    cells = model.rpn.anchor_generator.cell_anchors[0]
    sizes = (cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])
    assert torch.allclose(sizes[:3], torch.full((3,), 16.0 ** 2))  # first size, all ratios
    assert not torch.equal(cells, cells.round())
    names = set(model.state_dict())
    assert "rpn.head.cls_logits.weight" in names and "backbone.body.layer3.0.conv1.weight" in names


def test_norm_placement():
    cfg = load_detection_config(DEMO / "demo_coco_FPN_mask.yaml", TINY)
    model = build_model(cfg)
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, SyncBatchNorm2d) and not m.naive for m in bns)
    frozen = load_detection_config(DEMO / "demo_voc_C4.yaml", TINY + ["MODEL.BACKBONE.FREEZE_AT", "2"])
    body = build_model(frozen).backbone.body
    assert not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())


def test_unhonoured_key_is_refused():
    cfg = load_detection_config(DEMO / "demo_voc_C4.yaml", TINY + ["MODEL.KEYPOINT_ON", "True"])
    with pytest.raises(UserError, match="MODEL.KEYPOINT_ON"):
        check_supported(cfg, detection_defaults(), "x.yaml")


def test_moco_authors_voc_config_loads_and_builds(tmp_path):
    cfg = load_detection_config(write_moco_voc_configs(tmp_path))
    check_supported(cfg, detection_defaults(), "moco")
    model = build_model(cfg)
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert model.roi_heads.box_head.res5[0].conv1.in_channels == 1024
