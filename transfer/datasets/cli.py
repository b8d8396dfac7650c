"""Write datasets for the benchmark. ACTION 'synth' writes synthetic data, deterministically
from a seed, in the layouts of the real datasets, so every stage runs on it unchanged:

  DIR/unlabeled/                          flat folder of images (MoCo pretraining)
  DIR/classify/{train,val}/<class>/*.jpg  one object class per image (supervised init, linear probe, kNN)
  DIR/VOC2007/, DIR/VOC2012/              PASCAL VOC: JPEGImages, Annotations (XML), ImageSets/Main,
                                          and classes.txt (the dataset's class names, one a line)
  DIR/coco/                               COCO: train2017/, val2017/, annotations/instances_*.json
  DIR/coco/ (--keypoints)                 + annotations/person_keypoints_*.json and their stick-figure images
  DIR/lvis/ (--lvis)                      LVIS v0.5: lvis_v0.5_{train,val}.json, federated labels over coco/'s images
  DIR/cityscapes/ (--cityscapes)          Cityscapes: leftImg8bit/ and gtFine/ (polygons json, labelIds, instanceIds,
                                          labelTrainIds)
  DIR/VOC2012/ (--semseg)                 + ImageSets/Segmentation, SegmentationClass/ (palette PNGs) and
                                          SegmentationClassAug/ (train_aug), from the VOC2012 images' scenes
  DIR/SYNTH.json                          seed, scale, counts; marks the folder complete

DIR is a data root as the dataset readers take it (their data root argument or
$DETECTRON2_DATASETS).
Scales are defined in transfer/datasets/synth_scales.yaml.
"""

from __future__ import annotations

import argparse
import sys

from mocobench.transfer.datasets.synth import IMAGES_PER_WORKER, write_synthetic
from mocobench.transfer.datasets.synth_scales import load_synth_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    synth = actions.add_parser(
        "synth", help="write synthetic unlabeled/classify/VOC2007/VOC2012/COCO data",
        description="Write synthetic data under --out (see 'mocobench data --help' for the layout). "
                    "The same --seed and --scale give byte-identical files. Re-running into a complete "
                    "folder with the same seed and scale does nothing; a folder left incomplete by a "
                    "killed run is rewritten; any other non-empty folder is refused.")
    synth.add_argument("--out", required=True, metavar="DIR",
                       help="folder to write into: new, empty, or an earlier synth output")
    synth.add_argument("--seed", type=int, default=0, metavar="S",
                       help="non-negative integer every image is drawn from (default: 0)")
    scales = sorted(load_synth_spec().scales)
    synth.add_argument("--scale", default="demo", choices=scales,
                       help="size of the data: 'tiny' for tests (about a second), 'demo' for the CPU "
                            "end-to-end demo (seconds to write); default: demo")
    synth.add_argument("--workers", type=int, default=None, metavar="N",
                       help="processes drawing the images; the files are the same for any N (default: "
                            f"one per core, os.cpu_count(), but at most one per {IMAGES_PER_WORKER} images, "
                            "as fewer do not repay a process's start: 1 for 'tiny')")
    added = "added to a complete folder of the same seed and scale without rewriting it"
    for flag, what in (("--keypoints", "COCO person keypoints (stick figures; keypoints_coco_2017_* datasets)"),
                       ("--lvis", "LVIS v0.5 files (federated labels over the COCO images; lvis_v0.5_* datasets)"),
                       ("--cityscapes", "Cityscapes frames for instance segmentation "
                                        "(cityscapes_fine_instance_seg_* datasets)"),
                       ("--semseg", "VOC2012 semantic segmentation label maps (voc_2012_sem_seg_* datasets)")):
        synth.add_argument(flag, action="store_true", help=f"also write {what}; {added}")
    synth.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args: argparse.Namespace) -> int:
    manifest = write_synthetic(args.out, args.seed, args.scale, progress=not args.quiet, workers=args.workers,
                                keypoints=args.keypoints, lvis=args.lvis, cityscapes=args.cityscapes,
                                semseg=args.semseg)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"synthetic data (seed {args.seed}, scale {args.scale}) in {args.out}: {counts}", file=sys.stderr)
    return 0
