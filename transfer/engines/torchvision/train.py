"""One detection job on the torchvision engine: train (DDP when launched by torchrun),
checkpoint atomically, resume exactly, precise BN, evaluate, write the run dir (docs/DESIGN.md, "Run folder").

Exact resume: data order and augmentation are a pure function of (seed, iteration, rank)
(input.py), the LR is a pure function of the iteration (solver.py), and each rank's torch
RNG state (proposal sampling draws from it) is saved in the checkpoint.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench import dist as mdist
from mocobench import preempt
from mocobench.atomic import torch_save, write_json, write_text
from mocobench.checkpoints import check_weights, last_checkpoint, point_to, read_checkpoint
from mocobench.progress import JsonlLog, Progress
from mocobench.transfer.config import load_detection_config
from mocobench.transfer.datasets.catalog import check_images, get_dataset, get_datasets, get_metadata
from mocobench.transfer.engines.torchvision.build import DetectronRCNN, build_model
from mocobench.transfer.engines.torchvision.inference import run_inference
from mocobench.transfer.engines.torchvision.input import TrainBatches, TrainMapper
from mocobench.transfer.engines.torchvision.keypoints import dataset_flip_indices, few_keypoints
from mocobench.transfer.engines.torchvision.precise_bn import update_bn_stats
from mocobench.transfer.engines.torchvision.solver import auto_scale_workers, build_optimizer, set_lr
from mocobench.transfer.engines.torchvision.weights import BackboneInit
from mocobench.transfer.evaluation import evaluate

LOG_PERIOD = 20  # detectron2's default writer period (not a config key there either)
FINAL = "model_final.pth"


def select_device(cfg: CfgNode) -> torch.device:
    """MODEL.DEVICE; 'cuda' on a machine without CUDA falls back to CPU with a note, so the
    paper's configs (which leave detectron2's default 'cuda') run unchanged on a laptop."""
    wanted = cfg.MODEL.DEVICE
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        if mdist.local_rank() == 0:
            print("transfer: MODEL.DEVICE is cuda but CUDA is not available; running on cpu", flush=True)
        wanted = "cpu"
    if not (wanted == "cpu" or wanted.startswith("cuda")):
        raise UserError(f"MODEL.DEVICE {cfg.MODEL.DEVICE!r}: use cuda or cpu")
    return mdist.init_from_env(wanted)


def resolve_seed(seed: int) -> int:
    """-1: a random seed, the same on every rank (rank 0's), recorded in config.yaml."""
    if seed >= 0:
        return seed
    value = torch.tensor([int.from_bytes(os.urandom(4), "little") % (2 ** 31)])
    if mdist.is_distributed():
        dist.broadcast(value, 0)
    return int(value)


def is_run_checkpoint(path: str) -> bool:
    return path.endswith(".pth") and Path(path).is_file()


def load_run_checkpoint(path: str, model: torch.nn.Module) -> dict:
    try:
        ckpt = read_checkpoint(path)
        check_weights(ckpt["model"], path)
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a checkpoint of this model: {str(e).splitlines()[0]}") from None
    return ckpt


def precise_bn_rounds(cfg: CfgNode) -> int:
    """Precise BN runs before each intermediate evaluation and after the last iteration."""
    period = cfg.TEST.EVAL_PERIOD
    return 1 + ((cfg.SOLVER.MAX_ITER - 1) // period if period > 0 else 0)


class DetectionTrainer:
    model_builder = staticmethod(build_model)  # semseg.SemSegTrainer builds its FCN instead

    def __init__(self, cfg: CfgNode, out_dir: Path, data_root: Optional[str], config_path: str) -> None:
        self.cfg, self.out, self.data_root, self.config_path = cfg, out_dir, data_root, config_path
        self.device = select_device(cfg)
        self.rank, self.world = mdist.rank(), mdist.world_size()
        self.main = mdist.is_main()
        self.scaled = auto_scale_workers(cfg, self.world)
        self.amp = cfg.SOLVER.AMP.ENABLED and self.device.type == "cuda"
        if cfg.SOLVER.AMP.ENABLED and not self.amp and self.main:
            print("transfer: SOLVER.AMP.ENABLED needs CUDA; training in float32 on cpu", flush=True)
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
        self.init: Optional[BackboneInit] = None
        self.skipped_empty = 0  # training images without annotations, left out
        self.skipped_few_keypoints = 0  # and, under MODEL.KEYPOINT_ON, those with too few keypoints
        self.keypoint_flip: Optional[list[int]] = None

    # ---- set-up ------------------------------------------------------------------------
    def build(self, weights: str, with_init: bool) -> DetectronRCNN:
        hook = None
        if with_init and weights and not is_run_checkpoint(weights):
            self.init = hook = BackboneInit(self.cfg, weights)
        torch.manual_seed(self.cfg.SEED)  # same random heads on every rank
        model = self.model_builder(self.cfg, hook)
        if self.init is not None and self.main:
            print(self.init.report(), flush=True)
        if with_init and weights and is_run_checkpoint(weights):
            load_run_checkpoint(weights, model)
        return model.to(self.device)

    def check_classes(self, metadata: dict, names) -> None:
        k = len(metadata["thing_classes"])
        if k != self.cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise UserError(f"{self.config_path}: MODEL.ROI_HEADS.NUM_CLASSES is "
                            f"{self.cfg.MODEL.ROI_HEADS.NUM_CLASSES} but {list(names)} have {k} classes")

    def save(self, name: str, model, optimizer, scaler, iteration: int) -> None:
        rng = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}
        states = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.main:
            torch_save(self.out / name, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                         "scaler": scaler.state_dict(), "iteration": iteration, "rng": states})
            point_to(self.out, name)
        mdist.barrier()

    # ---- training ----------------------------------------------------------------------
    def training_records(self) -> list[dict]:
        """The images training reads; refused when they cannot fill one batch."""
        cfg = self.cfg
        records, meta = get_datasets(list(cfg.DATASETS.TRAIN), self.data_root)
        self.check_classes(meta, cfg.DATASETS.TRAIN)
        if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
            kept = [r for r in records if any(not a.get("iscrowd", 0) for a in r.get("annotations", []))]
            self.skipped_empty = len(records) - len(kept)
            if self.skipped_empty and self.main:
                print(f"transfer: DATASETS.TRAIN: skipped {self.skipped_empty} of {len(records)} images without "
                      f"annotations (DATALOADER.FILTER_EMPTY_ANNOTATIONS), as detectron2 does", flush=True)
            records = kept
        if cfg.MODEL.KEYPOINT_ON:
            records = self.keypoint_records(records)
        if not records:
            raise UserError(f"{list(cfg.DATASETS.TRAIN)}: no training images with annotations")
        # the processes share one stream of the images: a global batch larger than them repeats images in a step
        if len(records) < cfg.SOLVER.IMS_PER_BATCH:
            raise UserError(f"{self.config_path}: DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}: {len(records)} images "
                            f"give no full batch of SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} "
                            f"(images with annotations, over {self.world} process(es)); use at most {len(records)}")
        return records

    def keypoint_records(self, records: list[dict]) -> list[dict]:
        """The flip map of the training datasets, and the images with at least
        ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE labelled keypoints (detectron2's filter)."""
        names = list(self.cfg.DATASETS.TRAIN)
        self.keypoint_flip = dataset_flip_indices([get_metadata(n, self.data_root) for n in names], names,
                                                  self.cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS, self.config_path)
        minimum = self.cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
        if minimum <= 0:
            return records
        kept = [r for r in records if not few_keypoints(r, minimum)]
        self.skipped_few_keypoints = len(records) - len(kept)
        if self.skipped_few_keypoints and self.main:
            print(f"transfer: DATASETS.TRAIN: skipped {self.skipped_few_keypoints} of {len(records)} images with "
                  f"fewer than {minimum} labelled keypoints (MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE), "
                  "as detectron2 does", flush=True)
        return kept

    def train(self, model: DetectronRCNN, resume: bool, records: list[dict]) -> int:
        cfg, s = self.cfg, self.cfg.SOLVER
        optimizer = build_optimizer(cfg, model)
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        start = 0
        last = last_checkpoint(self.out) if resume else None
        if last is not None:
            ckpt = load_run_checkpoint(str(last), model)
            optimizer.load_state_dict(ckpt["optimizer"])
            scaler.load_state_dict(ckpt["scaler"])
            start = ckpt["iteration"]
            rng = ckpt["rng"][self.rank] if self.rank < len(ckpt["rng"]) else ckpt["rng"][0]
            torch.set_rng_state(rng["torch"])
            if rng.get("cuda") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda"])
            if self.main:
                print(f"transfer: resuming from {last} at iteration {start}", flush=True)
        else:
            torch.manual_seed(cfg.SEED + self.rank)
        log = JsonlLog(self.out / "metrics.jsonl", enabled=self.main)
        log.truncate_after("iter", start - 1)
        if start >= s.MAX_ITER:
            return start
        ddp = model
        if self.world > 1:
            ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        mapper = self.train_mapper()
        batches = TrainBatches(records, mapper, cfg.SEED, s.IMS_PER_BATCH, self.rank, self.world,
                               s.MAX_ITER + precise_bn_rounds(cfg) * cfg.TEST.PRECISE_BN.NUM_ITER,
                               cfg.DATALOADER.ASPECT_RATIO_GROUPING)
        loader = torch.utils.data.DataLoader(batches, sampler=range(start, s.MAX_ITER), batch_size=None,
                                             num_workers=cfg.DATALOADER.NUM_WORKERS, collate_fn=lambda b: b,
                                             # its own generator: drawing the workers' base seed from
                                             # the global RNG would shift proposal sampling on resume
                                             generator=torch.Generator().manual_seed(cfg.SEED))
        progress = Progress("transfer", s.MAX_ITER, start=start, enabled=self.main)
        preempt.install()
        model.train()
        t_last = time.perf_counter()
        for it, batch in zip(range(start, s.MAX_ITER), loader):
            lr = set_lr(optimizer, cfg, it)
            images, targets = self.to_device(batch)
            with torch.autocast("cuda", enabled=self.amp):
                losses = ddp(images, targets)
            total = sum(losses.values())
            if not torch.isfinite(total):
                raise UserError(f"{self.config_path}: loss became {float(total)} at iteration {it} "
                                f"(weights: {cfg.MODEL.WEIGHTS or 'random init'}): "
                                f"{ {k: round(float(v), 4) for k, v in losses.items()} }")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            done = it + 1
            if done % LOG_PERIOD == 0 or done == s.MAX_ITER or it == start:
                values = self.reduce({k: float(v.detach()) for k, v in losses.items()})
                now = time.perf_counter()
                entry = {"iter": it, "total_loss": sum(values.values()), **values, "lr": lr,
                         "time": (now - t_last) / (LOG_PERIOD if it != start else 1)}
                t_last = now
                log.write(**entry)
                progress.report(done, loss=entry["total_loss"], lr=lr)
            period = cfg.TEST.EVAL_PERIOD
            evaluate = period > 0 and done % period == 0 and done < s.MAX_ITER
            # detectron2's hook order: precise BN, then the checkpoint (which keeps its statistics), then evaluation
            if evaluate and cfg.TEST.PRECISE_BN.ENABLED:
                self.precise_bn(model, batches, done // period - 1)
            saved = s.CHECKPOINT_PERIOD > 0 and done % s.CHECKPOINT_PERIOD == 0 and done < s.MAX_ITER
            if saved:
                self.save(f"model_{it:07d}.pth", model, optimizer, scaler, done)
            if evaluate:
                log.write(iter=it, eval=self.evaluate(model))
            if done < s.MAX_ITER and preempt.requested(self.device):  # SLURM's signals (mocobench/preempt.py)
                if not saved:
                    self.save(f"model_{it:07d}.pth", model, optimizer, scaler, done)
                preempt.stop("transfer", self.out / f"model_{it:07d}.pth", done)
        if cfg.TEST.PRECISE_BN.ENABLED:
            self.precise_bn(model, batches, precise_bn_rounds(cfg) - 1)
        if self.world > 1:  # evidence that the ranks' BN statistics agree (checkpoints hold rank 0's)
            torch_save(self.out / f"bn_stats_rank{self.rank}.pth",
                       {k: v.cpu() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))})
        self.save(FINAL, model, optimizer, scaler, s.MAX_ITER)
        return s.MAX_ITER

    def train_mapper(self) -> TrainMapper:
        return TrainMapper(self.cfg, self.cfg.MODEL.MASK_ON, self.keypoint_flip)

    def to_device(self, batch):
        images = [im.to(self.device, non_blocking=True) for im, _ in batch]
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for _, t in batch]
        return images, targets

    def reduce(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(values, t)}

    def precise_bn(self, model: DetectronRCNN, batches: TrainBatches, round_index: int) -> None:
        """Round k reads the k-th NUM_ITER batches after the last training batch (detectron2's
        PreciseBN hook also continues one data stream from round to round)."""
        n = self.cfg.TEST.PRECISE_BN.NUM_ITER
        first = self.cfg.SOLVER.MAX_ITER + round_index * n
        stream = (batches[i] for i in range(first, first + n))
        model.train()
        used = update_bn_stats(model, stream, lambda b: model(*self.to_device(b)), n)
        if self.main:
            print(f"transfer: precise BN over {used} batches", flush=True)

    # ---- evaluation --------------------------------------------------------------------
    def evaluate(self, model: DetectronRCNN) -> dict:
        results = {}
        for name in self.cfg.DATASETS.TEST:
            records, meta = get_dataset(name, self.data_root)
            self.check_classes(meta, [name])
            detections = run_inference(model, self.cfg, records, meta, self.device)
            if self.main:
                results[name] = evaluate(name, self.data_root, detections, source=f"{name} detections",
                                         oks_sigmas=tuple(self.cfg.TEST.KEYPOINT_OKS_SIGMAS))
        return results


def trainer_class(cfg: CfgNode) -> type[DetectionTrainer]:
    """The job's trainer: semantic segmentation (SemanticSegmentor, semseg.py) or detection."""
    if cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor":
        from mocobench.transfer.engines.torchvision.semseg import SemSegTrainer

        return SemSegTrainer
    return DetectionTrainer


def run_job(cfg: CfgNode, out_dir: Path, data_root: Optional[str], config_path: str,
            resume: bool, eval_only: bool) -> Optional[dict]:
    """Returns the metrics (rank 0) after writing them to ``out_dir/metrics.json``."""
    t0 = time.perf_counter()
    job = trainer_class(cfg)(cfg, out_dir, data_root, config_path)
    if not cfg.DATASETS.TEST:
        raise UserError(f"{config_path}: DATASETS.TEST is empty: nothing to evaluate")
    checks = {}  # what loading each dataset dropped or changed, kept in the run's metadata
    for name in list(cfg.DATASETS.TEST) + ([] if eval_only else list(cfg.DATASETS.TRAIN)):
        checks[name] = check_images(name, data_root)  # a missing or unreadable image fails before anything runs
    records = None if eval_only else job.training_records()
    skipped = {"images_without_annotations_skipped": job.skipped_empty,
               "images_with_few_keypoints_skipped": job.skipped_few_keypoints}
    if any(skipped.values()):
        checks["DATASETS.TRAIN"] = {k: v for k, v in skipped.items() if v}
    stored = out_dir / "config.yaml"
    if resume and stored.is_file() and cfg.SEED < 0:
        cfg.SEED = load_detection_config(stored).SEED
    cfg.SEED = resolve_seed(cfg.SEED)
    last = last_checkpoint(out_dir) if resume else None
    weights = cfg.MODEL.WEIGHTS
    model = job.build(weights, with_init=last is None)
    iteration = 0
    if eval_only:
        if last is not None:
            iteration = load_run_checkpoint(str(last), model)["iteration"]
    else:
        if job.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text(out_dir / "config.yaml", cfg.dump())
            if job.scaled:
                write_json(out_dir / "autoscale.json", job.scaled)
        iteration = job.train(model, resume, records)
    results = job.evaluate(model)
    if not job.main:
        return None
    first = results[cfg.DATASETS.TEST[0]]
    metrics = {**first, "meta": {
        "config": config_path, "weights": weights, "seed": cfg.SEED, "engine": "torchvision",
        "dataset": cfg.DATASETS.TEST[0], "max_iter": iteration, "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "base_lr": cfg.SOLVER.BASE_LR, "world_size": job.world, "time_s": round(time.perf_counter() - t0, 1),
        "eval_only": eval_only}}
    if any(checks.values()):
        metrics["meta"]["data_checks"] = {name: counts for name, counts in checks.items() if counts}
    if len(results) > 1:
        metrics["datasets"] = results
    write_json(out_dir / "metrics.json", metrics)
    return metrics
