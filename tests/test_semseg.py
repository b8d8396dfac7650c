"""Semantic segmentation (the paper's FCN, appendix A.5) on VOC 2012 and Cityscapes: the synthetic label maps
(VOC's SegmentationClass / SegmentationClassAug and splits, Cityscapes' labelTrainIds), the loaders (against
detectron2's load_sem_seg and load_cityscapes_semantic), the metrics (against detectron2's SemSegEvaluator),
the training input, the FCN on both engines (held together by the parity check), the configs and both
tables end to end at tiny scale (run-all -> collate)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine_fixtures import needs_d2, one_thread, synth_fixture, write_tiny_table  # noqa: F401 (one_thread: autouse)
from mocobench import UserError
from mocobench.transfer.datasets import synth_cityscapes
from mocobench.transfer.datasets.catalog import check_images, get_dataset, get_metadata
from mocobench.transfer.datasets.sem_seg import read_label_map
from mocobench.transfer.datasets.synth import MARKER, write_synthetic
from mocobench.transfer.evaluation import evaluate
from mocobench.transfer.evaluation.sem_seg import evaluate_label_maps

ROOT = Path(__file__).resolve().parents[1]
DETECTION = ROOT / "configs" / "detection"
VOC_TRAIN, VOC_VAL = "voc_2012_sem_seg_train_aug", "voc_2012_sem_seg_val"
CITY_TRAIN, CITY_VAL = "cityscapes_fine_sem_seg_train", "cityscapes_fine_sem_seg_val"
# tiny width (ResNet-50 layout), a small head, tiny crops, a handful of iterations, plain BN
TINY = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
        "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16",
        "MODEL.SEM_SEG_HEAD.NORM", "BN", "INPUT.CROP.SIZE", "[64, 64]", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100",
        "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
VOC_CLASSES = 5  # background + the tiny scale's 4 classes


data = synth_fixture("semseg", semseg=True, cityscapes=True)


def split_ids(root: Path, folder: str, split: str) -> list[str]:
    return (root / "VOC2012" / "ImageSets" / folder / f"{split}.txt").read_text().split()


# ---- synthetic layout --------------------------------------------------------------------

def test_label_maps_are_written_only_when_asked_and_added_to_a_complete_folder(data, tmp_path):
    plain = tmp_path / "plain"
    write_synthetic(plain, seed=1, scale="tiny", workers=1)
    voc = plain / "VOC2012"
    assert not (voc / "SegmentationClass").exists() and not (voc / "ImageSets" / "Segmentation").exists()
    assert "semseg" not in json.loads((plain / MARKER).read_text())
    before = (voc / "Annotations" / "2012_000001.xml").read_bytes()
    write_synthetic(plain, seed=1, scale="tiny", workers=1, semseg=True)  # added, the rest untouched
    assert (voc / "Annotations" / "2012_000001.xml").read_bytes() == before
    ours = sorted(p.relative_to(plain) for folder in ("SegmentationClass", "SegmentationClassAug", "ImageSets")
                  for p in (voc / folder).rglob("*") if p.is_file())
    assert ours == sorted(p.relative_to(data) for folder in ("SegmentationClass", "SegmentationClassAug", "ImageSets")
                          for p in (data / "VOC2012" / folder).rglob("*") if p.is_file())
    assert all((plain / p).read_bytes() == (data / p).read_bytes() for p in ours)  # same seed: same bytes
    marker = json.loads((plain / MARKER).read_text())
    assert marker["semseg"] and marker["counts"]["VOC2012/segmentation/val"] == 6


def test_segmentation_splits_are_parts_of_the_detection_splits_and_name_their_label_folder(data):
    main_train, main_val = split_ids(data, "Main", "train"), split_ids(data, "Main", "val")
    train, val = split_ids(data, "Segmentation", "train"), split_ids(data, "Segmentation", "val")
    aug, trainval = split_ids(data, "Segmentation", "train_aug"), split_ids(data, "Segmentation", "trainval")
    assert val == main_val and set(train) < set(aug) == set(main_train) and trainval == sorted(train + val)
    voc = data / "VOC2012"
    assert sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png")) == trainval
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").glob("*.png")) == sorted(aug + val)
    for image_id in train:
        palette, grey = Image.open(voc / "SegmentationClass" / f"{image_id}.png"), Image.open(
            voc / "SegmentationClassAug" / f"{image_id}.png")
        assert palette.mode == "P" and grey.mode == "L"  # VOC's palette PNGs; the SBD conversion's grey ones
        assert palette.getpalette()[3:6] == [128, 0, 0] and palette.getpalette()[255 * 3:256 * 3] == [224, 224, 192]
        assert (np.asarray(palette) == np.asarray(grey)).all()


def test_voc_label_maps_are_the_images_objects_with_void_borders(data):
    voc = data / "VOC2012"
    classes = (voc / "classes.txt").read_text().split()
    seen = set()
    for image_id in split_ids(data, "Segmentation", "trainval"):
        labels = read_label_map(voc / "SegmentationClass" / f"{image_id}.png")
        assert Image.open(voc / "JPEGImages" / f"{image_id}.jpg").size == labels.shape[::-1]
        assert set(np.unique(labels)) <= {0, 255, *range(1, len(classes) + 1)}
        objects = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot().findall("object")
        inside = np.zeros(labels.shape, bool)
        for obj in objects:
            c = classes.index(obj.findtext("name")) + 1
            x0, y0, x1, y1 = (int(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            box = np.zeros(labels.shape, bool)
            box[y0 - 1:y1, x0 - 1:x1] = True  # 1-based inclusive
            inside |= box
            if obj.findtext("difficult") == "0":
                assert (labels[box] == c).any(), (image_id, obj.findtext("name"))  # its visible pixels carry its class
            seen.add(c)
        assert not ((labels > 0) & (labels < 255) & ~inside).any()  # no class outside the objects' boxes
        assert (labels == 255).any() and (labels == 0).any()  # void borders around objects, background
    assert len(seen) > 1


def test_cityscapes_train_ids_are_cityscapesscripts_mapping_of_the_label_ids(data):
    from cityscapesscripts.helpers.labels import id2label

    assert synth_cityscapes.TRAIN_IDS == {i: label.trainId for i, label in id2label.items()
                                          if label.trainId not in (255, -1) and i in set(synth_cityscapes.TRAIN_IDS)}
    for png in sorted((data / "cityscapes" / "gtFine").glob("*/*/*_gtFine_labelTrainIds.png")):
        label_ids = np.asarray(Image.open(str(png).replace("labelTrainIds", "labelIds")))
        expected = np.vectorize(lambda i: 255 if id2label[i].trainId in (-1, 255) else id2label[i].trainId)(label_ids)
        assert (np.asarray(Image.open(png)) == expected).all()


# ---- loaders -------------------------------------------------------------------------------

def test_records_and_metadata(data):
    records, meta = get_dataset(VOC_TRAIN, data)
    assert len(records) == 6 and all(set(r) == {"file_name", "sem_seg_file_name"} for r in records)
    assert all("/SegmentationClassAug/" in r["sem_seg_file_name"] for r in records)
    assert all("/SegmentationClass/" in r["sem_seg_file_name"] for r in get_dataset(VOC_VAL, data)[0])
    assert meta["stuff_classes"] == ["background", "star", "triangle", "ring", "cross"]
    assert (meta["ignore_label"], meta["evaluator_type"]) == (255, "sem_seg")
    records, meta = get_dataset(CITY_VAL, data)
    assert len(meta["stuff_classes"]) == 19 and meta["stuff_classes"][:2] == ["road", "sidewalk"]
    assert all(r["sem_seg_file_name"].endswith("_gtFine_labelTrainIds.png") for r in records)
    for name in (VOC_TRAIN, VOC_VAL, CITY_TRAIN, CITY_VAL):
        assert check_images(name, data) == {}


@needs_d2
@pytest.mark.parametrize("name", [VOC_TRAIN, "voc_2012_sem_seg_train", VOC_VAL])
def test_voc_records_equal_detectron2_load_sem_seg(data, name):
    from detectron2.data.datasets import load_sem_seg

    meta = get_metadata(name, data)
    theirs = load_sem_seg(meta["sem_seg_root"], meta["image_root"], gt_ext="png", image_ext="jpg")
    ids = set(split_ids(data, "Segmentation", meta["split"]))
    theirs = [r for r in theirs if Path(r["file_name"]).stem in ids]  # the folder pair holds other splits too
    assert get_dataset(name, data)[0] == theirs and len(theirs) == len(ids)


@needs_d2
@pytest.mark.parametrize("name", [CITY_TRAIN, CITY_VAL])
def test_cityscapes_records_equal_detectron2_load_cityscapes_semantic(data, name):
    from detectron2.data.datasets.builtin_meta import _get_builtin_metadata
    from detectron2.data.datasets.cityscapes import load_cityscapes_semantic

    meta = get_metadata(name, data)
    theirs = sorted(load_cityscapes_semantic(meta["image_dir"], meta["gt_dir"]), key=lambda r: r["file_name"])
    assert get_dataset(name, data)[0] == theirs and len(theirs) > 0
    assert meta["stuff_classes"] == _get_builtin_metadata("cityscapes")["stuff_classes"]


def _copy(data: Path, tmp_path: Path, part: str) -> Path:
    root = tmp_path / "root"
    shutil.copytree(data / part, root / part)
    return root


def test_bad_label_files_are_one_line_naming_the_file(data, tmp_path):
    root = _copy(data, tmp_path, "VOC2012")
    val = root / "VOC2012" / "ImageSets" / "Segmentation" / "val.txt"
    first = val.read_text().split()[0]
    missing = root / "VOC2012" / "SegmentationClass" / f"{first}.png"
    missing.rename(missing.with_suffix(".bak"))
    with pytest.raises(UserError, match=f"{missing}: label map of '{first}'.* not found"):
        get_dataset(VOC_VAL, root)
    missing.with_suffix(".bak").rename(missing)
    Image.open(missing).convert("RGB").save(missing)  # a colour picture of the classes, not their indices
    with pytest.raises(UserError, match="label map is a RGB image; want one channel of class indices"):
        read_label_map(missing)
    Image.open(missing).convert("L").resize((7, 5)).save(missing)
    with pytest.raises(UserError, match=f"gives 7x5 \\({missing}\\)"):
        check_images(VOC_VAL, root)
    val.write_text(val.read_text() + first + "\n")
    with pytest.raises(UserError, match=f"image id '{first}' is listed twice"):
        get_dataset(VOC_VAL, root)
    root = _copy(data, tmp_path / "city", "cityscapes")
    train_ids = sorted((root / "cityscapes" / "gtFine" / "val").glob("*/*_labelTrainIds.png"))[0]
    train_ids.unlink()
    with pytest.raises(UserError, match=f"{train_ids}: not found; write the labelTrainIds PNGs"):
        get_dataset(CITY_VAL, root)


# ---- evaluation ----------------------------------------------------------------------------

def perturbed_predictions(records: list[dict], k: int, seed: int) -> dict[str, np.ndarray]:
    """The ground truth (ignored pixels given a class), with blocks of wrong classes."""
    rng = np.random.default_rng(seed)
    out = {}
    for r in records:
        gt = read_label_map(r["sem_seg_file_name"])
        pred = np.where(gt == 255, rng.integers(0, k, gt.shape), gt)
        for _ in range(3):
            y, x = int(rng.integers(0, gt.shape[0] - 8)), int(rng.integers(0, gt.shape[1] - 8))
            pred[y:y + 8, x:x + 8] = rng.integers(0, k)
        out[r["file_name"]] = pred
    return out


@pytest.mark.parametrize("name", [VOC_VAL, CITY_VAL])
def test_the_ground_truth_scores_100(data, name):
    records, meta = get_dataset(name, data)
    k = len(meta["stuff_classes"])
    truth = {r["file_name"]: np.where((m := read_label_map(r["sem_seg_file_name"])) == 255, 0, m) for r in records}
    metrics = evaluate_label_maps(records, meta, truth)["sem_seg"]
    assert (metrics["mIoU"], metrics["fwIoU"], metrics["mACC"], metrics["pACC"]) == (100.0, 100.0, 100.0, 100.0)
    present = [c for c in meta["stuff_classes"] if not np.isnan(metrics[f"IoU-{c}"])]
    assert len(present) > 1 and all(metrics[f"IoU-{c}"] == metrics[f"ACC-{c}"] == 100.0 for c in present)
    if name == CITY_VAL:  # a class absent from the ground truth is NaN and left out of the means
        assert len(present) < k and np.isnan(metrics["ACC-sidewalk"])


@needs_d2
@pytest.mark.parametrize("name", [VOC_VAL, CITY_VAL])
def test_metrics_equal_detectron2_sem_seg_evaluator_on_the_same_predictions(data, name, tmp_path):
    from detectron2.evaluation import SemSegEvaluator

    from mocobench.transfer.engines.detectron2.datasets import register_datasets

    register_datasets([name], str(data))
    records, meta = get_dataset(name, data)
    k = len(meta["stuff_classes"])
    preds = perturbed_predictions(records, k, seed=3)
    evaluator = SemSegEvaluator(name, distributed=False)
    evaluator.reset()
    for r in records:  # logits whose argmax is the prediction
        logits = torch.nn.functional.one_hot(torch.from_numpy(preds[r["file_name"]]), k).permute(2, 0, 1).float()
        evaluator.process([{"file_name": r["file_name"]}], [{"sem_seg": logits}])
    theirs = evaluator.evaluate()["sem_seg"]
    ours = evaluate_label_maps(records, meta, preds)["sem_seg"]
    assert 0 < ours["mIoU"] < 100
    assert set(ours) == {key for key in theirs if not key.startswith(("BoundaryIoU-", "min(IoU"))}
    assert ours == {key: pytest.approx(theirs[key], abs=1e-9, nan_ok=True) for key in ours}
    # detectron2's sem_seg_predictions.json (per image and class, an RLE), through `mocobench evaluate`
    predictions = tmp_path / "sem_seg_predictions.json"
    predictions.write_text(json.dumps(evaluator._predictions))
    assert evaluate(name, data, evaluator._predictions)["sem_seg"] == pytest.approx(ours, nan_ok=True)
    done = subprocess.run([sys.executable, "-m", "mocobench", "evaluate", "--dataset", name, "--data-root", data,
                           "--detections", predictions], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.replace("NaN", "null"))["sem_seg"]["mIoU"] == pytest.approx(ours["mIoU"])


def test_predictions_are_checked_in_one_line(data):
    from pycocotools import mask as mask_util

    records, meta = get_dataset(VOC_VAL, data)
    h, w = read_label_map(records[0]["sem_seg_file_name"]).shape

    def rle(mask):
        encoded = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}

    name = records[0]["file_name"]
    full, half = np.ones((h, w), bool), np.zeros((h, w), bool)
    half[: h // 2] = True
    cases = {"names file 'elsewhere.jpg'":
                 [{"file_name": "elsewhere.jpg", "category_id": 0, "segmentation": rle(full)}],
             "names category_id 9": [{"file_name": name, "category_id": 9, "segmentation": rle(full)}],
             "covers pixels of": [{"file_name": name, "category_id": 0, "segmentation": rle(full)},
                                  {"file_name": name, "category_id": 1, "segmentation": rle(half)}],
             f"leave {(h - h // 2) * w} of {h * w} pixels without a class":
                 [{"file_name": name, "category_id": 0, "segmentation": rle(half)}],
             f"no prediction for {len(records) - 1} of {len(records)} images":
                 [{"file_name": name, "category_id": 0, "segmentation": rle(full)}],
             "has no RLE segmentation": [{"file_name": name, "category_id": 0, "segmentation": [1, 2, 3]}]}
    for expected, predictions in cases.items():
        with pytest.raises(UserError) as e:
            evaluate(VOC_VAL, data, predictions)
        assert "\n" not in str(e.value) and expected in str(e.value), (expected, str(e.value))
    with pytest.raises(UserError, match=r"is \(3, 2\) \(width x height\) but its label map"):
        evaluate_label_maps(records[:1], meta, {name: np.zeros((2, 3), np.int64)})


# ---- training input, models, engines ---------------------------------------------------------

def load_cfg(name: str, overrides=()):
    from mocobench.transfer.config import load_detection_config

    return load_detection_config(DETECTION / f"{name}.yaml", list(overrides))


def test_training_input_scales_pads_with_the_mean_and_ignore_crops_and_flips_image_and_labels_together(tmp_path):
    from mocobench.transfer.engines.torchvision.semseg import SemSegTrainMapper

    h, w = 40, 60
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = 200  # the left half bright, labelled 1; the right half dark, labelled 2
    labels = np.full((h, w), 2, np.uint8)
    labels[:, : w // 2] = 1
    Image.fromarray(image).save(tmp_path / "im.png")
    Image.fromarray(labels).save(tmp_path / "labels.png")
    record = {"file_name": str(tmp_path / "im.png"), "sem_seg_file_name": str(tmp_path / "labels.png")}
    cfg = load_cfg("voc_semseg_R_50_FCN_rgb", ["INPUT.CROP.SIZE", "[80, 96]"])
    mapper = SemSegTrainMapper(cfg)
    mean = np.asarray(cfg.MODEL.PIXEL_MEAN, np.float32)
    seen_flip = seen_pad = False
    for seed in range(20):
        im, target = mapper(record, np.random.default_rng(seed))
        im, sem = im.numpy().transpose(1, 2, 0), target["sem_seg"].numpy()
        assert im.shape == (80, 96, 3) and sem.shape == (80, 96) and set(np.unique(sem)) <= {1, 2, 255}
        padded = sem == 255
        assert np.allclose(im[padded], mean)  # padding: the pixel mean (0 once normalised), ignored
        seen_pad |= bool(padded.any())
        bright, dark = im[sem == 1].mean(axis=-1), im[sem == 2].mean(axis=-1)
        assert bright.size and dark.size and bright.mean() > 150 and dark.mean() < 50  # labels stay on their pixels
        columns = np.nonzero((sem == 1).any(0))[0]
        seen_flip |= bool(columns.size and (sem[:, -1] == 1).any() and not padded[:, -1].all())
    assert seen_pad and seen_flip
    with pytest.raises(UserError, match="INPUT.RANDOM_SCALE"):
        SemSegTrainMapper(load_cfg("voc_semseg_R_50_FCN_rgb", ["INPUT.RANDOM_SCALE", "[]"]))
    two = SemSegTrainMapper(load_cfg("voc_semseg_R_50_FCN_rgb", ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "2"]))
    with pytest.raises(UserError, match="labels.png: label 2 is neither a class \\(0..1"):
        two(record, np.random.default_rng(0))  # a label the classifier has no output for


def test_configs_carry_the_papers_recipe():
    for name, fmt in (("voc_semseg_R_50_FCN", "BGR"), ("voc_semseg_R_50_FCN_rgb", "RGB"),
                      ("cityscapes_semseg_R_50_FCN", "BGR"), ("cityscapes_semseg_R_50_FCN_rgb", "RGB")):
        cfg = load_cfg(name)
        voc = name.startswith("voc")
        assert cfg.INPUT.FORMAT == fmt and cfg.MODEL.RESNETS.STRIDE_IN_1X1 == (fmt == "BGR")
        assert cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor" and cfg.MODEL.SEM_SEG_HEAD.NAME == "MoCoFCNHead"
        assert cfg.MODEL.RESNETS.RES5_DILATION == 2 and list(cfg.MODEL.RESNETS.OUT_FEATURES) == ["res5"]
        head = cfg.MODEL.SEM_SEG_HEAD
        assert (head.CONVS_DIM, head.NORM, cfg.MODEL.RESNETS.NORM) == (256, "SyncBN", "SyncBN")
        assert cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES == (21 if voc else 19) and cfg.MODEL.BACKBONE.FREEZE_AT == 0
        assert list(cfg.INPUT.RANDOM_SCALE) == [0.5, 2.0] and cfg.INPUT.CROP.ENABLED and cfg.INPUT.MIN_SIZE_TEST == 0
        assert list(cfg.INPUT.CROP.SIZE) == ([513, 513] if voc else [769, 769])
        s = cfg.SOLVER
        assert (s.IMS_PER_BATCH, s.WEIGHT_DECAY) == (16, 0.0001)
        assert (s.BASE_LR, tuple(s.STEPS), s.MAX_ITER) == ((0.003, (21000, 27000), 30000) if voc else
                                                          (0.01, (63000, 81000), 90000))
        assert list(cfg.DATASETS.TRAIN) == [VOC_TRAIN if voc else CITY_TRAIN]
        assert list(cfg.DATASETS.TEST) == [VOC_VAL if voc else CITY_VAL]


def test_torchvision_engine_runs_the_fcn_configs_and_refuses_their_keys_in_a_detection_config():
    from mocobench.transfer.config import detection_defaults
    from mocobench.transfer.engines.torchvision.supported import check_supported

    for name in ("voc_semseg_R_50_FCN_rgb", "cityscapes_semseg_R_50_FCN_rgb"):
        check_supported(load_cfg(name), detection_defaults(), name)
    with pytest.raises(UserError, match="config key INPUT.RANDOM_SCALE is set"):
        check_supported(load_cfg("voc_R_50_C4_24k", ["INPUT.RANDOM_SCALE", "[0.5, 2.0]"]), detection_defaults(), "voc")


def test_fcn_is_stride_16_with_dilated_heads_and_its_loss_ignores_255():
    from mocobench.transfer.engines.torchvision.semseg import build_semseg_model

    cfg = load_cfg("voc_semseg_R_50_FCN_rgb", TINY)
    model = build_semseg_model(cfg)
    assert [c.dilation for c in model.sem_seg_head.convs] == [(6, 6), (6, 6)]
    model.eval()
    (logits,) = model([torch.rand(3, 64, 96) * 255])
    assert logits.shape == (21, 4, 6)  # stride 16
    model.train()
    target = torch.full((64, 96), 255, dtype=torch.int64)
    assert float(model([torch.rand(3, 64, 96) * 255], [{"sem_seg": target}])["loss_sem_seg"]) == 0.0  # nothing labelled
    target[:8, :8] = 3
    assert float(model([torch.rand(3, 64, 96) * 255], [{"sem_seg": target}])["loss_sem_seg"]) > 0


PARITY = {"voc-BGR-SyncBN": ("voc_semseg_R_50_FCN", []),
          "cityscapes-RGB-BN": ("cityscapes_semseg_R_50_FCN_rgb", ["MODEL.RESNETS.NORM", "BN",
                                                                   "MODEL.SEM_SEG_HEAD.NORM", "BN"])}
NARROW = ["MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.RES2_OUT_CHANNELS", "16",
          "MODEL.RESNETS.WIDTH_PER_GROUP", "4", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "INPUT.CROP.SIZE", "[97, 97]"]


@needs_d2
@pytest.mark.parametrize("case", PARITY)
def test_fcn_equals_detectron2_semantic_segmentor_with_the_same_weights_and_batch(case):
    from mocobench.transfer.engines.parity import format_table
    from mocobench.transfer.engines.parity_semseg import check_semseg_parity

    config, overrides = PARITY[case]
    rows = check_semseg_parity(str(DETECTION / f"{config}.yaml"), NARROW + overrides)
    table = format_table(rows)
    print(table)
    assert all(r.ok for r in rows), table
    losses = [r for r in rows if r.component.startswith("loss_sem_seg")]
    assert len(losses) == 2 and all(r.difference <= 1e-6 and r.ours > 0 for r in losses), table
    assert any(r.component.startswith("grad backbone") for r in rows) and rows[-1].ours > 0


@needs_d2
def test_a_mismatch_fails_the_semseg_check():
    from mocobench.transfer.engines.parity_semseg import build_semseg_pair, compare_losses, semseg_batch

    pair = build_semseg_pair(str(DETECTION / "voc_semseg_R_50_FCN.yaml"), NARROW)
    pair.ours.loss_weight = 1.5
    images, targets, _ = semseg_batch(pair.cfg)
    rows = compare_losses(pair, images, targets)
    assert not rows[0].ok and not rows[1].ok


@needs_d2
def test_check_parity_command_runs_the_semseg_check(cli):
    done = cli("transfer", "--check-parity", "--config", DETECTION / "voc_semseg_R_50_FCN_rgb.yaml", *NARROW)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss_sem_seg (batch-statistics BN)" in done.stdout and "components within tolerance" in done.stdout


@needs_d2
def test_both_engines_evaluate_a_torchvision_engine_fcn_checkpoint_to_the_same_numbers(data, tmp_path, cli):
    """A run checkpoint of the torchvision engine (BN statistics of the val images, a classifier drawn wide:
    class maps of several classes), evaluated by each engine: detectron2 reads it through the export table."""
    from mocobench.transfer.engines.torchvision.semseg import build_semseg_model, test_image

    config = DETECTION / "voc_semseg_R_50_FCN_rgb.yaml"
    tiny = [*TINY, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(VOC_CLASSES)]
    cfg = load_cfg("voc_semseg_R_50_FCN_rgb", tiny)
    torch.manual_seed(0)
    model = build_semseg_model(cfg)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average: the images' statistics
    with torch.no_grad():
        for record in get_dataset(VOC_VAL, data)[0]:
            model.sem_seg_head(model.backbone(model.transform([test_image(record, cfg)]).tensors)["res5"])
        model.sem_seg_head.predictor.weight.normal_(0, 0.5)
    torch.save({"model": model.state_dict(), "iteration": 3}, tmp_path / "model_final.pth")
    for engine in ("torchvision", "detectron2"):
        done = cli("transfer", "--engine", engine, "--eval-only", "--config", config, "--data-root", data,
                   "--weights", tmp_path / "model_final.pth", "--output-dir", tmp_path / engine, *tiny)
        assert done.returncode == 0, done.stderr[-3000:]
    ours, theirs = (json.loads((tmp_path / run / "metrics.json").read_text())["sem_seg"]
                    for run in ("torchvision", "detectron2"))
    assert sum(ours[f"IoU-{c}"] > 0 for c in ("background", "star", "triangle", "ring", "cross")) >= 3
    assert ours == pytest.approx({k: v for k, v in theirs.items() if k in ours}, abs=1e-9, nan_ok=True)


# ---- tables ----------------------------------------------------------------------------------

def test_tables_load_with_published_rows_for_either_engine(tmp_path):
    from conftest import run_cli_at_once
    from mocobench.results.paper import paper_rows
    from mocobench.results.tables import resolve_tables

    for name, supervised, column in (("voc_semseg_R50_FCN", 74.4, "VOC"),
                                     ("cityscapes_semseg_R50_FCN", 74.6, "Cityscapes")):
        (table,) = resolve_tables([name])
        assert table.cfg.ENGINE == "" and table.metrics == ["sem_seg/mIoU"] and table.cfg.TRIALS == 5
        rows = paper_rows(table).set_index("label")
        assert list(rows.index) == ["random init.", "supervised IN-1M", "MoCo IN-1M", "MoCo IG-1B"]
        assert rows.loc["supervised IN-1M", "sem_seg/mIoU"] == supervised and rows.loc["supervised IN-1M", "baseline"]
        # each row's source names the paper's table it was checked against, in the paper's PDF
        assert all(s.startswith(f"He et al. 2020, Table 6 (semantic seg., {column} column);")
                   and "checked against Table 6 in the paper's PDF" in s and "to be checked" not in s
                   for s in rows["source"]), rows["source"]
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    common = ["--tables", "voc_semseg_R50_FCN", "cityscapes_semseg_R50_FCN", "--inits", inits,
              "--output", tmp_path / "out", "--dry-run"]
    done = run_cli_at_once({engine: ["run-all", "--engine", engine, *common]
                            for engine in ("torchvision", "detectron2")})
    for engine, result in done.items():
        assert result.returncode == 0, result.stderr
        assert "10 jobs in 2 tables" in result.stdout and "voc_semseg_R50_FCN/random/seed4" in result.stdout


def run_table(name: str, engine: str, data: Path, tmp_path: Path, overrides: list[str] = []) -> str:
    table = write_tiny_table(name, tmp_path, TINY + overrides, trials=1)
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {weights: '', format: RGB}\n")
    out, report = tmp_path / "out", tmp_path / "report"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "mocobench", "run-all", "--engine", engine, "--tables", table,
                           "--inits", inits, "--output", out, "--data-root", data], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / name / "random" / "seed0" / "metrics.json").read_text())
    assert metrics["meta"]["engine"] == engine and 0 <= metrics["sem_seg"]["mIoU"] <= 100
    done = subprocess.run([sys.executable, "-m", "mocobench", "collate", out, "--out", report, "--tables", table,
                           "--inits", inits], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return (report / "report.md").read_text()


def test_voc_table_runs_end_to_end_at_tiny_scale_on_the_torchvision_engine(data, tmp_path):
    md = run_table("voc_semseg_R50_FCN", "torchvision", data, tmp_path,
                   ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", str(VOC_CLASSES)])
    assert md.startswith("### VOC 2012 semantic segmentation, R50 FCN (train_aug -> val)")
    assert "| random |" in md and "MoCo IG-1B" in md and "73.6" in md


@needs_d2
def test_cityscapes_table_runs_end_to_end_at_tiny_scale_on_the_detectron2_engine(data, tmp_path):
    md = run_table("cityscapes_semseg_R50_FCN", "detectron2", data, tmp_path)
    assert md.startswith("### Cityscapes semantic segmentation, R50 FCN (train_fine -> val)")
    assert "| random |" in md and "MoCo IG-1B" in md and "75.5" in md
