"""The MoCo authors' detection configs (facebookresearch/moco, detection/configs at commit
3402035), as text: the suite must load them unchanged."""

from pathlib import Path

MOCO_BASE = """\
MODEL:
  META_ARCHITECTURE: "GeneralizedRCNN"
  RPN:
    PRE_NMS_TOPK_TEST: 6000
    POST_NMS_TOPK_TEST: 1000
  ROI_HEADS:
    NAME: "Res5ROIHeadsExtraNorm"
  BACKBONE:
    FREEZE_AT: 0
  RESNETS:
    NORM: "naiveSyncBN"
TEST:
  PRECISE_BN:
    ENABLED: True
SOLVER:
  IMS_PER_BATCH: 16
  BASE_LR: 0.02
"""


MOCO_VOC = """_BASE_: "pascal_voc_R_50_C4_24k.yaml"
MODEL:
  PIXEL_MEAN: [123.675, 116.280, 103.530]
  PIXEL_STD: [58.395, 57.120, 57.375]
  WEIGHTS: "See Instructions"
  RESNETS:
    STRIDE_IN_1X1: False
INPUT:
  FORMAT: "RGB"
"""
MOCO_VOC_BASE = """_BASE_: "Base-RCNN-C4-BN.yaml"
MODEL:
  MASK_ON: False
  WEIGHTS: "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
  ROI_HEADS:
    NUM_CLASSES: 20
INPUT:
  MIN_SIZE_TRAIN: (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800)
  MIN_SIZE_TEST: 800
DATASETS:
  TRAIN: ('voc_2007_trainval', 'voc_2012_trainval')
  TEST: ('voc_2007_test',)
SOLVER:
  STEPS: (18000, 22000)
  MAX_ITER: 24000
  WARMUP_ITERS: 100
"""


def write_moco_voc_configs(folder: Path) -> Path:
    """Write Base-RCNN-C4-BN + pascal_voc_R_50_C4_24k(_moco).yaml; return the _moco file."""
    (folder / "Base-RCNN-C4-BN.yaml").write_text(MOCO_BASE)
    (folder / "pascal_voc_R_50_C4_24k.yaml").write_text(MOCO_VOC_BASE)
    (folder / "pascal_voc_R_50_C4_24k_moco.yaml").write_text(MOCO_VOC)
    return folder / "pascal_voc_R_50_C4_24k_moco.yaml"
