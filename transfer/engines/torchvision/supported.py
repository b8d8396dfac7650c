"""The detectron2 config keys the torchvision engine honours.

Any other key set to a value other than detectron2's default is refused, naming the key:
an ignored setting would silently run a different experiment. Keys listed here with only
some values implemented check those values where they are read (build_* functions).
"""

from __future__ import annotations

from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.config import differing_keys
from mocobench.transfer.datasets.sem_seg import is_sem_seg_name

HONOURED = (
    "VERSION", "SEED", "OUTPUT_DIR", "CUDNN_BENCHMARK",
    "MODEL.MASK_ON", "MODEL.DEVICE", "MODEL.META_ARCHITECTURE", "MODEL.WEIGHTS",
    "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.BACKBONE", "MODEL.FPN",
    "MODEL.PROPOSAL_GENERATOR", "MODEL.ANCHOR_GENERATOR.NAME", "MODEL.ANCHOR_GENERATOR.SIZES",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "MODEL.ANCHOR_GENERATOR.OFFSET", "MODEL.RPN",
    "MODEL.ROI_HEADS", "MODEL.ROI_BOX_HEAD.NAME", "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
    "MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT", "MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS",
    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
    "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "MODEL.ROI_BOX_HEAD.POOLER_TYPE",
    "MODEL.ROI_BOX_HEAD.NUM_FC", "MODEL.ROI_BOX_HEAD.FC_DIM", "MODEL.ROI_BOX_HEAD.NUM_CONV",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "MODEL.ROI_BOX_HEAD.NORM", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG",
    "MODEL.ROI_MASK_HEAD", "MODEL.DC5", "MODEL.KEYPOINT_ON", "MODEL.ROI_KEYPOINT_HEAD",
    "MODEL.RESNETS.DEPTH", "MODEL.RESNETS.OUT_FEATURES", "MODEL.RESNETS.NUM_GROUPS", "MODEL.RESNETS.NORM",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.RES5_DILATION",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TRAIN_SAMPLING", "INPUT.MAX_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
    "INPUT.MAX_SIZE_TEST", "INPUT.RANDOM_FLIP", "INPUT.FORMAT", "INPUT.MASK_FORMAT",
    "DATASETS.TRAIN", "DATASETS.TEST",
    "DATALOADER.NUM_WORKERS", "DATALOADER.ASPECT_RATIO_GROUPING", "DATALOADER.FILTER_EMPTY_ANNOTATIONS",
    "SOLVER.LR_SCHEDULER_NAME", "SOLVER.MAX_ITER", "SOLVER.BASE_LR", "SOLVER.MOMENTUM", "SOLVER.NESTEROV",
    "SOLVER.WEIGHT_DECAY", "SOLVER.WEIGHT_DECAY_NORM", "SOLVER.GAMMA", "SOLVER.STEPS", "SOLVER.WARMUP_FACTOR",
    "SOLVER.WARMUP_ITERS", "SOLVER.WARMUP_METHOD", "SOLVER.CHECKPOINT_PERIOD", "SOLVER.IMS_PER_BATCH",
    "SOLVER.REFERENCE_WORLD_SIZE", "SOLVER.BIAS_LR_FACTOR", "SOLVER.WEIGHT_DECAY_BIAS", "SOLVER.AMP",
    "SOLVER.CLIP_GRADIENTS.ENABLED",
    "TEST.EVAL_PERIOD", "TEST.DETECTIONS_PER_IMAGE", "TEST.PRECISE_BN", "TEST.KEYPOINT_OKS_SIGMAS",
)
# honoured by the semantic segmentor only (MODEL.META_ARCHITECTURE SemanticSegmentor, semseg.py):
# a detection config setting them would be ignored
SEMANTIC_ONLY = ("MODEL.SEM_SEG_HEAD.NAME", "MODEL.SEM_SEG_HEAD.IN_FEATURES", "MODEL.SEM_SEG_HEAD.IGNORE_VALUE",
                 "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "MODEL.SEM_SEG_HEAD.NORM",
                 "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT", "INPUT.CROP", "INPUT.RANDOM_SCALE")


def _honoured(key: str, semantic: bool = False) -> bool:
    return any(key == h or key.startswith(h + ".") for h in HONOURED + (SEMANTIC_ONLY if semantic else ()))


def check_supported(cfg: CfgNode, defaults: CfgNode, source: str) -> None:
    if cfg.MODEL.KEYPOINT_ON and cfg.MODEL.ROI_HEADS.NAME != "StandardROIHeads":  # keypoints.py: FPN / C5 only
        raise UserError(f"{source}: MODEL.KEYPOINT_ON is True with MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME}; "
                        "keypoint R-CNN needs StandardROIHeads (detectron2's Res5ROIHeads has no keypoint head either)")
    lvis = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n.startswith("lvis_")]
    if lvis:  # federated labels, repeat-factor sampling and LVISEval: the LVIS table's engine is detectron2
        raise UserError(f"{source}: dataset {lvis[0]} is LVIS, whose federated training and evaluation the "
                        "torchvision engine does not implement; the LVIS table runs on --engine detectron2")
    city = [n for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST) if n.startswith("cityscapes_")
            and not is_sem_seg_name(n)]  # its semantic segmentation runs here
    if city:  # its frame-name image ids and cityscapesscripts' evaluation are wired to detectron2's engine only
        raise UserError(f"{source}: dataset {city[0]} is Cityscapes, which the torchvision engine does not run; "
                        "the Cityscapes table runs on --engine detectron2")
    semantic = cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
    for key in differing_keys(cfg, defaults):
        if not _honoured(key, semantic):
            raise UserError(f"{source}: config key {key} is set to {cfg_value(cfg, key)!r}, which the "
                            "torchvision engine does not implement (leave it at detectron2's default, "
                            "or use --engine detectron2)")


def cfg_value(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node
