"""One detection job on detectron2: the run folder of docs/DESIGN.md, as the torchvision engine
writes it (config.yaml, metrics.jsonl, model_*.pth / model_final.pth / last_checkpoint from
detectron2's checkpointer, metrics.json at the end with the same keys).

Processes: under torchrun (or SLURM via submitit) every process is one of detectron2's
workers -- it joins the process group from the environment (gloo on CPU, NCCL on GPU) and
builds detectron2's per-machine group as its launch() does; a plain invocation runs one
worker through launch().
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.engine import launch
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.atomic import write_json, write_text
from mocobench.transfer.convert import load_detectron2_weights
from mocobench.transfer.datasets.catalog import get_metadata
from mocobench.transfer.engines.detectron2.config import load_d2_config
from mocobench.transfer.engines.detectron2.datasets import register_datasets
from mocobench.transfer.engines.detectron2.trainer import Trainer
from mocobench.transfer.engines.export import export_to_detectron2
from mocobench.checkpoints import last_checkpoint, read_checkpoint
from mocobench.transfer.engines.torchvision.train import is_run_checkpoint, resolve_seed
from mocobench.transfer.engines.torchvision.weights import check_conventions


def job_config(args: argparse.Namespace, ours: CfgNode, out_dir: Path) -> CfgNode:
    """detectron2's reading of the job's file and overrides; --weights and --seed as the
    shared loader (transfer/cli.py) applied them to ``ours``."""
    opts = list(args.opts)
    cfg = load_d2_config(args.config, opts[1:] if opts[:1] == ["--"] else opts)
    cfg.MODEL.WEIGHTS, cfg.SEED, cfg.OUTPUT_DIR = ours.MODEL.WEIGHTS, ours.SEED, str(out_dir)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        print("transfer: MODEL.DEVICE is cuda but CUDA is not available; running on cpu", flush=True)
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def check_weights(cfg: CfgNode, resume: bool) -> None:
    """Converted .pkl weights carry their input conventions: refuse a config that disagrees.
    Every file detectron2's checkpointer will unpickle is first read by the safe reader, which
    refuses one that would run code (the checkpointer's own loaders would run it)."""
    path = cfg.MODEL.WEIGHTS
    if path and path.endswith(".pkl"):
        if not Path(path).is_file():
            raise UserError(f"{path}: weights file not found (MODEL.WEIGHTS / --weights)")
        _, meta = load_detectron2_weights(path)
        if meta:
            check_conventions(cfg, meta, path)
    elif path and Path(path).is_file():
        read_checkpoint(path)
    last = last_checkpoint(Path(cfg.OUTPUT_DIR)) if resume else None
    if last is not None:
        read_checkpoint(last)


def load_eval_weights(cfg: CfgNode, model: torch.nn.Module, resume: bool) -> int:
    """The run's last checkpoint (--resume), a torchvision-engine run checkpoint (exported to
    detectron2's names), or anything detectron2's checkpointer reads; returns its iteration."""
    checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
    path = cfg.MODEL.WEIGHTS
    if not (resume and checkpointer.has_checkpoint()) and is_run_checkpoint(path):
        ckpt = read_checkpoint(path)
        if any(k.startswith("backbone.body.") for k in ckpt.get("model", {})):
            fpn = list(cfg.MODEL.FPN.IN_FEATURES) if "fpn" in cfg.MODEL.BACKBONE.NAME else ()
            state = export_to_detectron2(ckpt["model"], cfg.MODEL.ROI_HEADS.NUM_CLASSES, fpn)
            missing = [k for k in model.load_state_dict(state, strict=False).missing_keys
                       if not k.endswith("num_batches_tracked")]
            if missing:
                raise UserError(f"{path}: torchvision-engine checkpoint lacks {missing[:5]} for this config")
            return int(ckpt.get("iteration", 0))
    return int(checkpointer.resume_or_load(path, resume=resume).get("iteration", -1)) + 1


def check_classes(cfg: CfgNode, data_root: Optional[str], config_path: str, eval_only: bool) -> None:
    names = list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN))
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        for name in names:
            meta = get_metadata(name, data_root)
            k = len(meta.get("stuff_classes", ()))
            if k != cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES or meta.get("ignore_label") != cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE:
                raise UserError(f"{config_path}: MODEL.SEM_SEG_HEAD.NUM_CLASSES / IGNORE_VALUE are "
                                f"{cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES} / {cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE} but "
                                f"{name} has {k} classes and ignores {meta.get('ignore_label')}")
        return
    for name in names:
        k = len(get_metadata(name, data_root)["thing_classes"])
        if k != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise UserError(f"{config_path}: MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} "
                            f"but {name} has {k} classes")


def worker(cfg: CfgNode, config_path: str, data_root: Optional[str], resume: bool, eval_only: bool) -> None:
    """One process's share of the job; rank 0 writes the run dir's files."""
    t0 = time.perf_counter()
    out_dir = Path(cfg.OUTPUT_DIR)
    if not cfg.DATASETS.TEST:
        raise UserError(f"{config_path}: DATASETS.TEST is empty: nothing to evaluate")
    register_datasets(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), data_root)
    check_classes(cfg, data_root, config_path, eval_only)
    stored = out_dir / "config.yaml"
    if resume and stored.is_file() and cfg.SEED < 0:
        cfg.SEED = load_d2_config(str(stored)).SEED
    cfg.SEED = resolve_seed(cfg.SEED)
    seed_all_rng(cfg.SEED + comm.get_rank())
    check_weights(cfg, resume)
    cfg.freeze()
    if eval_only:
        model = Trainer.build_model(cfg)
        iteration = load_eval_weights(cfg, model, resume)
        results = Trainer.test(cfg, model)
    else:
        if comm.is_main_process():
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text(stored, cfg.dump())
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.train()
        results = getattr(trainer, "_last_eval_results", {})
        iteration = cfg.SOLVER.MAX_ITER
    if comm.is_main_process():
        write_json(out_dir / "metrics.json", run_metrics(cfg, config_path, results, iteration, eval_only,
                                                         time.perf_counter() - t0))
    comm.synchronize()


def run_metrics(cfg: CfgNode, config_path: str, results: dict, iteration: int, eval_only: bool,
                seconds: float) -> dict[str, Any]:
    """detectron2's results -> the run folder's metrics.json. DefaultTrainer.test returns the lone dataset's dict
    itself, or a dict by dataset name when there are several."""
    names = list(cfg.DATASETS.TEST)
    by_name = {names[0]: results} if len(names) == 1 else dict(results)
    metrics = {**{k: dict(v) for k, v in by_name[names[0]].items()}, "meta": {
        "config": config_path, "weights": cfg.MODEL.WEIGHTS, "seed": cfg.SEED, "engine": "detectron2",
        "dataset": names[0], "max_iter": iteration, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR, "world_size": comm.get_world_size(), "time_s": round(seconds, 1),
        "eval_only": eval_only}}
    if len(names) > 1:
        metrics["datasets"] = {n: {k: dict(v) for k, v in r.items()} for n, r in by_name.items()}
    return metrics


def run_detectron2_job(args: argparse.Namespace, ours: CfgNode, out_dir: Path,
                       data_root: Optional[str]) -> Optional[dict]:
    """Runs the job (all processes); rank 0 returns the metrics it wrote. ``ours`` is the
    job's config as the shared loader read it (already validated, --weights/--seed applied)."""
    cfg = job_config(args, ours, out_dir)
    job = (cfg, args.config, data_root, args.resume, args.eval_only)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        mdist.init_from_env(cfg.MODEL.DEVICE)
        comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", mdist.world_size())))
        try:
            worker(*job)
        finally:
            mdist.cleanup()
    else:
        launch(worker, 1, args=job)
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return json.loads((out_dir / "metrics.json").read_text())
