"""The torchvision engine's RPN where torchvision's defaults differ from detectron2's: which
proposals survive, and what MODEL.RPN.LOSS_WEIGHT scales."""

from __future__ import annotations

import torch

from engine_fixtures import DEMO, TINY
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.engines.torchvision.build import build_model

# every anchor sampled: the losses are a deterministic function of the weights
ALL_ANCHORS = ["MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.RPN.POSITIVE_FRACTION", "1.0"]


def rpn(*overrides: str):
    torch.manual_seed(0)
    return build_model(load_detection_config(DEMO / "demo_voc_C4.yaml", [*TINY, *overrides])).rpn


def test_proposals_with_any_area_are_kept():
    """detectron2 keeps width and height > 0; torchvision's >= 1e-5 dropped nearly empty boxes."""
    net = rpn()
    boxes = torch.tensor([[[10.0, 10.0, 10.0 + 1e-6, 30.0],   # nearly empty: kept
                           [20.0, 20.0, 20.0, 40.0],          # empty: dropped
                           [-5.0, 5.0, 0.0, 9.0],             # empty once clipped: dropped
                           [30.0, 30.0, 50.0, 50.0]]])
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1])
    kept, scores = net.filter_proposals(boxes, logits, [(64, 64)], [4])
    assert kept[0].tolist() == boxes[0, [0, 3]].tolist()
    assert scores[0].tolist() == logits[[0, 3]].tolist()


def test_proposals_are_the_top_k_per_level_then_nms_then_top_k():
    net = rpn("MODEL.RPN.PRE_NMS_TOPK_TEST", "2", "MODEL.RPN.POST_NMS_TOPK_TEST", "2")
    net.eval()
    level0 = [[0.0, 0.0, 20.0, 20.0], [1.0, 0.0, 21.0, 20.0], [40.0, 40.0, 60.0, 60.0]]
    level1 = [[0.0, 0.0, 20.0, 20.0], [10.0, 30.0, 30.0, 50.0]]
    boxes = torch.tensor([level0 + level1])
    logits = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.6])
    kept, _ = net.filter_proposals(boxes, logits, [(64, 64)], [3, 2])
    # level 0's top 2 overlap (NMS keeps one); level 1's box equal to it survives (NMS per level)
    assert kept[0].tolist() == [level0[0], level1[0]]


def test_loss_weight_scales_both_rpn_losses():
    images = [torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(1)) * 255]
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([1])}]
    losses = {}
    for weight in ("1.0", "2.5"):
        net = rpn(*ALL_ANCHORS, "MODEL.RPN.LOSS_WEIGHT", weight, "MODEL.RPN.BBOX_REG_LOSS_WEIGHT", "3.0")
        model = build_model(load_detection_config(DEMO / "demo_voc_C4.yaml", TINY))
        features = model.backbone(model.transform(images).tensors)
        torch.manual_seed(0)
        _, losses[weight] = net(model.transform(images), {"res4": features["res4"]}, targets)
    for name in ("loss_objectness", "loss_rpn_box_reg"):
        assert torch.allclose(losses["2.5"][name], 2.5 * losses["1.0"][name], rtol=1e-6), name
