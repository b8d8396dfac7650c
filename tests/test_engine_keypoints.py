"""Keypoint R-CNN on the torchvision engine (transfer/engines/torchvision/keypoints.py): each part held
to detectron2's (the head, keypoints_to_heatmap, keypoint_rcnn_loss, heatmaps_to_keypoints, the
training input's keypoints with the left/right swap of a flip, the MIN_KEYPOINTS_PER_IMAGE filter, the
COCO results), the whole model to detectron2's by the parity check (losses, gradients, detections and
keypoints on the same weights and batch), and the keypoint table end to end at tiny scale
(run-all -> collate) on this engine."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_fixtures import needs_d2, one_thread, synth_fixture, write_tiny_table  # noqa: F401 (one_thread: autouse)
from mocobench import UserError
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.datasets.catalog import get_dataset, get_metadata
from mocobench.transfer.datasets.person_keypoints import KEYPOINT_NAMES, flip_map
from mocobench.transfer.engines.torchvision import keypoints as kp

ROOT = Path(__file__).resolve().parents[1]
DETECTION = ROOT / "configs" / "detection"
CONFIG = DETECTION / "coco_R_50_FPN_keypoint_1x_rgb.yaml"
TRAIN, VAL = "keypoints_coco_2017_train", "keypoints_coco_2017_val"
# the parity check's small images and few proposals, the paper's ResNet-50 layout at a reduced width,
# the keypoint head's 8 convs narrowed
SMALL = ["INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "160", "INPUT.MIN_SIZE_TEST", "96",
         "INPUT.MAX_SIZE_TEST", "160", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "32"]
NARROW = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
          "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(32, 32, 32, 32, 32, 32, 32, 32)"]
# a training run in seconds: tiny width, tiny images, two iterations, plain BN
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.NORM", "BN",
        "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
        "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "100", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2", "SOLVER.STEPS", "()", "SOLVER.WARMUP_ITERS", "1",
        "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.PRECISE_BN.ENABLED", "False", "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DEVICE", "cpu"]


data = synth_fixture("kp_engine", keypoints=True)


def coco_flip() -> list[int]:
    return kp.flip_indices(KEYPOINT_NAMES, flip_map(KEYPOINT_NAMES))


def random_keypoints(g: torch.Generator, boxes: torch.Tensor, k: int = 17) -> torch.Tensor:
    """(N, k, 3) around each box: some outside, some on its far borders, some unlabelled or hidden."""
    wh = boxes[:, 2:] - boxes[:, :2]
    xy = boxes[:, None, :2] + (torch.rand(len(boxes), k, 2, generator=g) * 1.4 - 0.2) * wh[:, None]
    xy[:, 0, 0], xy[:, 1, 1] = boxes[:, 2], boxes[:, 3]  # exactly on the far borders: the last cell
    v = torch.randint(0, 3, (len(boxes), k), generator=g).float()
    out = torch.cat([xy, v[:, :, None]], 2)
    out[v == 0] = 0
    return out


def random_boxes(g: torch.Generator, n: int) -> torch.Tensor:
    corner = torch.rand(n, 2, generator=g) * 100
    size = torch.rand(n, 2, generator=g) * 60 + 0.3  # some under a pixel
    return torch.cat([corner, corner + size], 1)


# ---- the head and its parts ----------------------------------------------------------------------

def test_head_is_eight_512_convs_a_deconv_and_a_2x_upsample_to_56x56_heatmaps():
    from mocobench.transfer.engines.torchvision.build import build_model

    cfg = load_detection_config(CONFIG, NARROW[:6])  # the config's own head: detectron2's defaults
    head = build_model(cfg).roi_heads.keypoint_head
    convs = [m for n, m in head.named_children() if n.startswith("conv_fcn")]
    assert [c.out_channels for c in convs] == [512] * 8 and all(c.kernel_size == (3, 3) for c in convs)
    assert head.score_lowres.out_channels == 17 and head.score_lowres.stride == (2, 2)
    assert head(torch.zeros(2, 256, 14, 14)).shape == (2, 17, 56, 56)
    assert head(torch.zeros(0, 256, 14, 14)).shape == (0, 17, 56, 56)  # no RoI: an empty batch, no error


def test_flip_indices_swap_left_and_right_and_keep_the_nose():
    idx = coco_flip()
    names = list(KEYPOINT_NAMES)
    assert idx[names.index("nose")] == names.index("nose")
    assert idx[names.index("left_eye")] == names.index("right_eye")
    assert idx[names.index("right_ankle")] == names.index("left_ankle")
    assert sorted(idx) == list(range(17)) and [idx[i] for i in idx] == list(range(17))


def test_transform_keypoints_scales_flips_swaps_and_unlabels_what_leaves_the_image():
    idx = coco_flip()
    kps = np.zeros((17, 3))
    kps[1] = (10.0, 5.0, 2)  # left_eye
    kps[2] = (30.0, 5.0, 1)  # right_eye
    kps[0] = (90.0, 5.0, 2)  # nose: scaled by 2 it leaves the 100-wide image
    plain = kp.transform_keypoints(kps.ravel().tolist(), 2.0, 2.0, (60, 100), "none", None)
    assert plain[1].tolist() == [20.0, 10.0, 2] and plain[0].tolist() == [0, 0, 0]
    flipped = kp.transform_keypoints(kps.ravel().tolist(), 2.0, 2.0, (60, 100), "horizontal", idx)
    assert flipped[1].tolist() == [100 - 60.0, 10.0, 1] and flipped[2].tolist() == [100 - 20.0, 10.0, 2]
    with pytest.raises(UserError, match="keypoint_flip_map"):
        kp.transform_keypoints(kps.ravel().tolist(), 1.0, 1.0, (60, 100), "horizontal", None)


def test_training_datasets_must_have_keypoints_that_agree_with_the_head(data):
    meta = get_metadata(TRAIN, data)
    assert kp.dataset_flip_indices([meta], [TRAIN], 17, "c.yaml") == coco_flip()
    with pytest.raises(UserError, match="NUM_KEYPOINTS is 5 but"):
        kp.dataset_flip_indices([meta], [TRAIN], 5, "c.yaml")
    with pytest.raises(UserError, match="coco_2017_train has no keypoints"):
        kp.dataset_flip_indices([get_metadata("coco_2017_train", data)], ["coco_2017_train"], 17, "c.yaml")
    other = {**meta, "keypoint_flip_map": meta["keypoint_flip_map"][1:]}
    with pytest.raises(UserError, match="different keypoint_flip_map"):
        kp.dataset_flip_indices([meta, other], [TRAIN, VAL], 17, "c.yaml")


def test_keypoint_configs_are_accepted_and_res5_heads_refused_in_one_line():
    from mocobench.transfer.config import detection_defaults
    from mocobench.transfer.engines.torchvision.supported import check_supported

    for name in ("coco_R_50_FPN_keypoint_1x", "coco_R_50_FPN_keypoint_2x_rgb"):
        check_supported(load_detection_config(DETECTION / f"{name}.yaml"), detection_defaults(), name)
    cfg = load_detection_config(DETECTION / "coco_R_50_C4_1x.yaml", ["MODEL.KEYPOINT_ON", "True"])
    with pytest.raises(UserError) as e:
        check_supported(cfg, detection_defaults(), "c4.yaml")
    assert "\n" not in str(e.value) and "StandardROIHeads" in str(e.value) and "MODEL.KEYPOINT_ON" in str(e.value)


@needs_d2
def test_keypoints_to_heatmap_is_detectron2s():
    from detectron2.structures.keypoints import _keypoints_to_heatmap

    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(g, 40)
    kps = random_keypoints(g, boxes)
    ours, theirs = kp.keypoints_to_heatmap(kps, boxes, 56), _keypoints_to_heatmap(kps, boxes, 56)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert 0 < int(ours[1].sum()) < ours[1].numel() and int(ours[0].max()) == 56 * 56 - 1


@needs_d2
@pytest.mark.parametrize("normalizer", [None, 17 * 512 * 0.25 * 2], ids=["visible", "fixed"])
def test_loss_is_detectron2_keypoint_rcnn_loss(normalizer):
    from detectron2.modeling.roi_heads.keypoint_head import keypoint_rcnn_loss
    from detectron2.structures import Boxes, Instances, Keypoints
    from detectron2.utils.events import EventStorage

    g = torch.Generator().manual_seed(1)
    boxes = [random_boxes(g, 7), random_boxes(g, 0), random_boxes(g, 5)]  # an image without RoIs
    kps = [random_keypoints(g, b) for b in boxes]
    logits = torch.randn(12, 17, 56, 56, generator=g, requires_grad=True)
    ours = kp.keypoint_rcnn_loss(logits, boxes, kps, normalizer)
    instances = [Instances((200, 200), proposal_boxes=Boxes(b), gt_keypoints=Keypoints(k)) for b, k in zip(boxes, kps)]
    with EventStorage():
        theirs = keypoint_rcnn_loss(logits, instances, normalizer)
    assert float(ours) > 0 and float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # nothing valid: a zero loss that still reaches the head (detectron2's sum * 0)
    hidden = [k.clone() for k in kps]
    for k in hidden:
        k[:, :, 2] = 0
    zero = kp.keypoint_rcnn_loss(logits, boxes, hidden, normalizer)
    zero.backward()
    assert float(zero) == 0.0 and logits.grad is not None


@needs_d2
def test_heatmaps_to_keypoints_is_detectron2s_where_torchvisions_score_is_not():
    from detectron2.structures import heatmaps_to_keypoints as d2_heatmaps_to_keypoints
    from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints

    g = torch.Generator().manual_seed(2)
    rois = random_boxes(g, 9)
    maps = torch.randn(9, 17, 56, 56, generator=g) * 3
    ours = kp.heatmaps_to_keypoints(maps, rois)
    theirs = d2_heatmaps_to_keypoints(maps, rois)[:, :, [0, 1, 3]]  # keypoint_rcnn_inference's columns
    assert torch.equal(ours[:, :, :2], theirs[:, :, :2])
    torch.testing.assert_close(ours[:, :, 2], theirs[:, :, 2], rtol=1e-5, atol=0)
    _, tv_scores = tv_heatmaps_to_keypoints(maps, rois)  # the maximum logit: not detectron2's score
    assert not torch.allclose(tv_scores, theirs[:, :, 2])
    assert kp.heatmaps_to_keypoints(maps[:0], rois[:0]).shape == (0, 17, 3)


# ---- training input ------------------------------------------------------------------------------

class Draws:
    """A stand-in for the mapper's generator: the first size, and a flip or not."""

    def __init__(self, flip: bool) -> None:
        self.flip = flip

    def choice(self, sizes):
        return sizes[0]

    def integers(self, low, high):
        return low

    def random(self) -> float:
        return 0.0 if self.flip else 0.99


@needs_d2
def test_training_keypoints_equal_detectron2_dataset_mapper_and_a_flip_swaps_left_and_right(data):
    from detectron2.data import DatasetMapper, MetadataCatalog
    from detectron2.data import transforms as T
    from detectron2.data.detection_utils import create_keypoint_hflip_indices
    from detectron2.structures import BoxMode

    from mocobench.transfer.engines.torchvision.input import TrainMapper

    records, meta = get_dataset(TRAIN, data)
    name = "mocobench_test_keypoints_flip"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(keypoint_names=meta["keypoint_names"],
                                      keypoint_flip_map=meta["keypoint_flip_map"])
    indices = create_keypoint_hflip_indices([name])
    assert kp.flip_indices(meta["keypoint_names"], meta["keypoint_flip_map"]) == list(indices) == coco_flip()
    cfg = load_detection_config(CONFIG, ["INPUT.MIN_SIZE_TRAIN", "(80,)"])
    ours_mapper = TrainMapper(cfg, False, coco_flip())
    got = {}
    for flip in (False, True):
        theirs_mapper = DatasetMapper(True, augmentations=[T.ResizeShortestEdge((80,), 1333, "choice"),
                                                           T.RandomFlip(prob=1.0 if flip else 0.0)],
                                      image_format="RGB", use_keypoint=True, keypoint_hflip_indices=np.asarray(indices))
        for record in records:
            d2_record = copy.deepcopy(record)
            for a in d2_record["annotations"]:
                a["bbox_mode"] = BoxMode.XYXY_ABS
            theirs = theirs_mapper(d2_record)["instances"]
            _, target = ours_mapper(record, Draws(flip))
            assert torch.equal(target["boxes"], theirs.gt_boxes.tensor)
            assert torch.equal(target["keypoints"], theirs.gt_keypoints.tensor), record["file_name"]
            got.setdefault(flip, []).append((target["keypoints"], theirs.image_size[1]))
    left, right = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
    for (plain, w), (mirrored, _) in zip(got[False], got[True]):  # the person's left wrist is the image's right one
        both = (plain[:, right, 2] > 0) & (mirrored[:, left, 2] > 0)
        assert torch.allclose(mirrored[both, left, 0], w - plain[both, right, 0])
    assert any(((p[:, right, 2] > 0) & (m[:, left, 2] > 0)).any() for (p, _), (m, _) in zip(got[False], got[True]))


@needs_d2
def test_min_keypoints_per_image_keeps_the_images_detectron2_keeps(data):
    from detectron2.data.build import filter_images_with_few_keypoints

    records, _ = get_dataset(TRAIN, data)
    counts = sorted(sum(int((np.asarray(a["keypoints"][2::3]) > 0).sum()) for a in r["annotations"]) for r in records)
    for minimum in (1, counts[len(counts) // 2], counts[-1] + 1):
        with contextlib.redirect_stdout(io.StringIO()):
            theirs = filter_images_with_few_keypoints(copy.deepcopy(records), minimum)
        ours = [r for r in records if not kp.few_keypoints(r, minimum)]
        assert [r["image_id"] for r in ours] == [r["image_id"] for r in theirs]
    assert 0 < len([r for r in records if kp.few_keypoints(r, counts[len(counts) // 2])]) < len(records)


# ---- the whole model against detectron2's ---------------------------------------------------------

PARITY = {"visible-SyncBN-flip": ([], 1),
          "fixed-normaliser-BN-flip": (["MODEL.ROI_KEYPOINT_HEAD.NORMALIZE_LOSS_BY_VISIBLE_KEYPOINTS", "False",
                                        "MODEL.ROI_KEYPOINT_HEAD.LOSS_WEIGHT", "4.0", "MODEL.RESNETS.NORM", "BN",
                                        "MODEL.FPN.NORM", "BN"], 2)}


@needs_d2
@pytest.mark.parametrize("case", PARITY)
def test_keypoint_rcnn_equals_detectron2_with_the_same_weights_and_batch(case):
    """Seeds 1 and 2 flip one of the two images (the left/right swap is in the batch)."""
    from mocobench.transfer.engines.parity import check_parity, format_table

    overrides, seed = PARITY[case]
    rows = check_parity(str(CONFIG), SMALL + NARROW + overrides, seed=seed)
    table = format_table(rows)
    print(table)
    assert all(r.ok for r in rows), table
    losses = [r for r in rows if r.component.startswith("loss_")]
    (keypoint,) = [r for r in losses if r.component.startswith("loss_keypoint")]
    assert keypoint.ours > 0 and keypoint.difference <= 1e-6, table
    total, reference = sum(r.ours for r in losses), sum(r.detectron2 for r in losses)
    assert len(losses) == 5 and abs(total - reference) <= 1e-6 * reference, table
    components = " ".join(r.component for r in rows)
    assert "keypoints (x, y)" in components and "keypoint scores" in components, table
    assert next(r for r in rows if r.component == "detections").ours > 0


@needs_d2
def test_a_keypoint_mismatch_fails_the_check():
    from mocobench.transfer.engines.parity import build_pair, compare_training, synthetic_batch

    pair = build_pair(str(CONFIG), SMALL + NARROW, seed=1)
    pair.ours.roi_heads.keypoint_loss_weight = 1.5
    images, targets = synthetic_batch(pair.cfg, seed=1)
    rows = {r.component.split(" ")[0]: r for r in compare_training(pair, images, targets)}
    assert not rows["loss_keypoint"].ok and rows["loss_cls"].ok


@needs_d2
def test_check_parity_command_runs_on_the_keypoint_config(cli):
    done = cli("transfer", "--check-parity", "--config", CONFIG, "--seed", 1, *SMALL, *NARROW)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "loss_keypoint / loss_keypoint" in done.stdout and "components within tolerance" in done.stdout


@needs_d2
def test_coco_keypoint_results_equal_detectron2s_at_the_original_size(data):
    """The detections of one model on the val images, turned into COCO results by each engine's
    inference (detector_postprocess + instances_to_coco_json there): same boxes, keypoints, scores."""
    from detectron2.evaluation.coco_evaluation import instances_to_coco_json

    from mocobench.transfer.engines.parity import build_pair
    from mocobench.transfer.engines.torchvision.inference import to_results
    from mocobench.transfer.engines.torchvision.input import test_input
    from mocobench.transfer.evaluation import evaluate

    pair = build_pair(str(CONFIG), NARROW + ["INPUT.MIN_SIZE_TEST", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "50"])
    pair.ours.eval()
    pair.detectron2.eval()
    records, meta = get_dataset(VAL, data)
    ours, theirs = [], []
    with torch.no_grad():
        for record in records:
            image = test_input(record, pair.cfg)
            ours += to_results(pair.ours([image])[0], record, tuple(image.shape[-2:]), {0: 1})
            out = pair.detectron2([{"image": image, "height": record["height"], "width": record["width"]}])
            for d in instances_to_coco_json(out[0]["instances"].to("cpu"), record["image_id"]):
                theirs.append({**d, "category_id": 1})
    assert len(ours) == len(theirs) > 0
    for a, b in zip(ours, theirs):
        assert a["image_id"] == b["image_id"] and a["score"] == pytest.approx(b["score"], rel=1e-5)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
        assert a["keypoints"] == pytest.approx(b["keypoints"], rel=1e-5, abs=1e-3)
    assert evaluate(VAL, data, ours)["keypoints"] == pytest.approx(evaluate(VAL, data, theirs)["keypoints"],
                                                                   nan_ok=True)


# ---- end to end ----------------------------------------------------------------------------------

def test_training_skips_images_with_few_keypoints_and_evaluates_keypoint_ap(data, tmp_path, cli):
    records, _ = get_dataset(TRAIN, data)
    counts = [sum(int((np.asarray(a["keypoints"][2::3]) > 0).sum()) for a in r["annotations"]) for r in records]
    minimum = sorted(counts)[len(counts) // 2]
    out = tmp_path / "run"
    done = cli("transfer", "--config", CONFIG, "--weights", "", "--seed", 0, "--data-root", data, "--output-dir", out,
               *TINY, "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE", minimum)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    skipped = sum(c < minimum for c in counts)
    assert skipped and metrics["meta"]["data_checks"]["DATASETS.TRAIN"] == {
        "images_with_few_keypoints_skipped": skipped}
    assert f"skipped {skipped} of {len(records)} images with fewer than {minimum} labelled keypoints" in done.stdout
    assert metrics["meta"]["engine"] == "torchvision"
    assert set(metrics["keypoints"]) == {"AP", "AP50", "AP75", "APm", "APl"}
    assert 0 <= metrics["keypoints"]["AP"] <= 100 and "loss_keypoint" in (out / "metrics.jsonl").read_text()


def test_keypoint_table_runs_end_to_end_at_tiny_scale_on_the_torchvision_engine(data, tmp_path):
    table = write_tiny_table("coco_kp_R50_FPN_2x", tmp_path, TINY)
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    out, report = tmp_path / "out", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mocobench", "run-all", "--engine", "torchvision", "--tables", table,
                           "--inits", inits, "--output", out, "--data-root", data], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "coco_kp_R50_FPN_2x" / "random" / "seed0" / "metrics.json").read_text())
    assert metrics["meta"]["engine"] == "torchvision" and 0 <= metrics["keypoints"]["AP"] <= 100
    done = subprocess.run([sys.executable, "-m", "mocobench", "collate", out, "--out", report, "--tables", table,
                           "--inits", inits], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    md = (report / "report.md").read_text()
    assert md.startswith("### COCO keypoint R-CNN R50-FPN, 2x schedule (train2017 -> val2017)")
    assert "| random |" in md and "MoCo IN-1M" in md and "66.8" in md
