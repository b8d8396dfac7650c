"""detectron2's DefaultTrainer for our jobs: the evaluator each dataset's evaluator_type
names (PascalVOCDetectionEvaluator / COCOEvaluator, as the MoCo authors' train_net; keypoint AP
with TEST.KEYPOINT_OKS_SIGMAS; LVISEvaluator for LVIS and CityscapesInstanceEvaluator for Cityscapes,
as detectron2's train_net; SemSegEvaluator for semantic segmentation, whose training input is the
suite's, semseg.py), the
reduced DC5 backbone when MODEL.DC5.CONV_DIM asks for it, metrics.jsonl instead of
detectron2's metrics.json event log, and CPU-capable sync BN under gloo."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, PascalVOCDetectionEvaluator, SemSegEvaluator
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter

from mocobench.transfer.engines.detectron2 import roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from mocobench.transfer.engines.detectron2.backbone import NAME as REDUCED_DC5, uses_reduced_dc5
from mocobench.transfer.engines.detectron2.cityscapes import CityscapesInstanceEvaluator
from mocobench.transfer.engines.detectron2.events import JsonlEventWriter
from mocobench.transfer.engines.detectron2.lvis import LVISEvaluator
from mocobench.transfer.engines.detectron2.semseg import build_semseg_train_loader  # (registers MoCoFCNHead)

JSONL = "metrics.jsonl"


def naive_sync_bn(module: nn.Module) -> nn.Module:
    """torch's SyncBatchNorm refuses CPU modules under DDP; detectron2's NaiveSyncBatchNorm
    (a differentiable all_reduce of the batch statistics) does the same job on gloo."""
    if isinstance(module, nn.SyncBatchNorm):
        naive = NaiveSyncBatchNorm(module.num_features, eps=module.eps, momentum=module.momentum,
                                   affine=module.affine, track_running_stats=module.track_running_stats)
        naive.load_state_dict(module.state_dict())
        return naive
    for name, child in module.named_children():
        setattr(module, name, naive_sync_bn(child))
    return module


class Trainer(DefaultTrainer):
    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        if uses_reduced_dc5(cfg):
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.BACKBONE.NAME = REDUCED_DC5  # only for building: config.yaml keeps the file's name
        model = build_model(cfg)
        if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
            model = naive_sync_bn(model)
        return model

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str) -> DatasetEvaluator:
        kind = MetadataCatalog.get(dataset_name).evaluator_type
        if kind == "pascal_voc":
            return PascalVOCDetectionEvaluator(dataset_name)
        if kind == "lvis":
            return LVISEvaluator(dataset_name, distributed=True)
        if kind == "cityscapes_instance":
            return CityscapesInstanceEvaluator(dataset_name)
        if kind == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True)
        return COCOEvaluator(dataset_name, distributed=True, kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
            return build_semseg_train_loader(cfg)
        return super().build_train_loader(cfg)

    def build_writers(self):
        self.jsonl = JsonlEventWriter(Path(self.cfg.OUTPUT_DIR) / JSONL)
        return [CommonMetricPrinter(self.max_iter), self.jsonl]

    def resume_or_load(self, resume: bool = True) -> None:
        super().resume_or_load(resume)
        if comm.is_main_process():
            self.jsonl.begin(self.start_iter)
