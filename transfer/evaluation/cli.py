"""Evaluate a file of detections against a VOC or COCO split, as detectron2 would.

The detections are a JSON list in COCO results format: {"image_id", "category_id", "bbox":
[x, y, w, h], "score"} plus an optional "segmentation" (RLE, "counts" as a string) for mask AP
and an optional "keypoints" ([x, y, score] per keypoint) for keypoint AP.
"category_id" is the dataset's own id: the COCO json's category id, or for VOC the 1-based
index into the class list (classes.txt or the 20 VOC classes); "image_id" is the dataset
record's id (a VOC file id such as "000005", a COCO image id).

VOC splits get the devkit AP (11-point for 2007) at IoU 0.50:0.05:0.95 with AP, AP50, AP75
and per-class AP50; COCO splits get pycocotools' AP, AP50, AP75, APs, APm, APl for boxes
and, when the detections have masks, for masks; keypoints_coco_* splits add keypoint AP, AP50,
AP75, APm, APl (OKS with COCO's person sigmas unless --oks-sigmas); lvis_v0.5_* splits get the lvis
package's federated AP, AP50, AP75, APs, APm, APl, APr, APc, APf for boxes and masks ("category_id"
is the LVIS id, 1..N); cityscapes_fine_instance_seg_* splits get cityscapesscripts' mask AP and
AP50 (masks required; "image_id" is the frame's file name, "category_id" its Cityscapes label
id); the semantic-segmentation splits (voc_<year>_sem_seg_*, cityscapes_fine_sem_seg_*) take detectron2's
sem_seg_predictions.json instead (per image and predicted class {"file_name", "category_id": the class
index, "segmentation": RLE}, covering each pixel once) and get SemSegEvaluator's mIoU, fwIoU, mACC,
pACC and per-class IoU and accuracy. Numbers are in percent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mocobench import UserError
from mocobench.atomic import check_file_target, write_json
from mocobench.transfer.datasets.catalog import dataset_names
from mocobench.transfer.evaluation import evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, metavar="NAME",
                        help="detectron2 dataset name: voc_<year>_<split> (e.g. voc_2007_test) or one of "
                             + ", ".join(n for n in dataset_names() if not n.startswith("voc")))
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="folder holding VOC2007/, VOC2012/, coco/ (default: $DETECTRON2_DATASETS, "
                             "else ./datasets)")
    parser.add_argument("--detections", required=True, type=Path, metavar="FILE.json",
                        help="detections in COCO results format (see above)")
    parser.add_argument("--oks-sigmas", type=float, nargs="+", default=(), metavar="S",
                        help="keypoint OKS sigmas, one per keypoint (detectron2's TEST.KEYPOINT_OKS_SIGMAS; "
                             "default: COCO's 17 person sigmas)")
    parser.add_argument("--output", type=Path, default=None, metavar="metrics.json",
                        help="also write the metrics here (atomically); they are always printed")


def run(args: argparse.Namespace) -> int:
    if args.output is not None:
        check_file_target(args.output)
    if not args.detections.is_file():
        raise UserError(f"{args.detections}: detections file not found")
    try:
        detections = json.loads(args.detections.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{args.detections}:{e.lineno}: malformed JSON: {e.msg}") from None
    metrics = evaluate(args.dataset, args.data_root, detections, source=str(args.detections),
                       oks_sigmas=args.oks_sigmas)
    if args.output is not None:
        write_json(args.output, metrics)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0
