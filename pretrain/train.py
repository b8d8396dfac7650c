"""Contrastive pretraining loop (MoCo, end-to-end or memory bank): DDP, shuffle-BN,
checkpoints, exact resume, metrics.jsonl.

One code path for every scale: a ResNet-50 on ImageNet over 8 GPUs and the demo's
narrow ResNet-50 on 64-pixel crops on two CPU cores differ only in config values.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel

from mocobench import UserError, __version__
from mocobench import dist as mdist
from mocobench import preempt
from mocobench.atomic import write_text
from mocobench.checkpoints import last_checkpoint
from mocobench.progress import JsonlLog, Progress
from mocobench.pretrain import checkpoint
from mocobench.pretrain.augment import moco_transform
from mocobench.pretrain.config import resnet_shape
from mocobench.pretrain.data import (ImageDataset, ResumableSampler, labelled_splits, list_images, make_loader,
                                    user_errors_from_workers)
from mocobench.pretrain.knn import check_ks, evaluate as knn_evaluate
from mocobench.pretrain.mechanisms import build_model
from mocobench.pretrain.moco import Contrastive, instance_accuracy, key_similarity
from mocobench.pretrain.schedule import learning_rate


def check_batch(cfg: CfgNode, world: int) -> int:
    """The per-process batch; refuses sizes the processes and BN groups cannot divide
    (the dictionary's own constraints are checked at config load: validate_mechanism)."""
    batch, groups = cfg.SOLVER.BATCH_SIZE, cfg.MOCO.SPLIT_BN_GROUPS
    if batch % world:
        raise UserError(f"SOLVER.BATCH_SIZE {batch} is not divisible by the {world} processes")
    if (batch // world) % groups:
        raise UserError(f"per-process batch {batch // world} is not divisible by MOCO.SPLIT_BN_GROUPS {groups}")
    return batch // world


def make_optimizer(cfg: CfgNode, moco: Contrastive) -> torch.optim.SGD:
    """SGD on the query encoder only: MoCo's key encoder moves by the momentum update."""
    return torch.optim.SGD(moco.encoder_q.parameters(), lr=learning_rate(cfg, 0),
                           momentum=cfg.SOLVER.MOMENTUM, weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               im_q: torch.Tensor, im_k: torch.Tensor, amp: bool,
               index: torch.Tensor | None = None,
               amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One iteration (InfoNCE loss, backward, SGD step); returns (loss, logits, labels).
    ``index``: the images' dataset indices (the memory bank's entries). ``amp_dtype``: the
    autocast dtype (None: autocast's default for the device, float16 on CUDA).

    A function of its own so the benchmarks time exactly the step the training loop runs.
    """
    with torch.autocast(im_q.device.type, dtype=amp_dtype, enabled=amp):
        logits, labels = model(im_q, im_k, index)
        loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, logits, labels


def _state(cfg: CfgNode, moco: Contrastive, optimizer, scaler, epoch: int, position: int, iteration: int) -> dict:
    return {
        "epoch": epoch, "arch": f"resnet{cfg.MODEL.DEPTH}",
        "state_dict": {"module." + k: v for k, v in moco.state_dict().items()},
        "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
        "iteration": iteration, "epoch_position": position, "rng": checkpoint.rng_state(),
        "resnet_shape": resnet_shape(cfg).as_dict(), "config": cfg.dump(), "mocobench_version": __version__,
    }


def pretrain(cfg: CfgNode, out_dir: Path, resume: bool) -> Path:
    """Run (or continue) pretraining; returns the final checkpoint's path."""
    device = mdist.init_from_env(cfg.TRAIN.DEVICE)
    world, main = mdist.world_size(), mdist.is_main()
    per_rank = check_batch(cfg, world)
    samples = list_images(cfg.DATA.PATH)
    if cfg.KNN.DATA:  # the monitor's data and k checked now, not after the first epochs of training
        check_ks(list(cfg.KNN.K), len(labelled_splits(cfg.KNN.DATA)[0]), Path(cfg.KNN.DATA) / "train")
    on_gpu = device.type == "cuda"
    amp, channels_last = on_gpu and cfg.TRAIN.AMP, on_gpu and cfg.TRAIN.CHANNELS_LAST

    torch.manual_seed(cfg.TRAIN.SEED)
    try:
        moco = build_model(cfg, resnet_shape(cfg), len(samples)).to(device)
    except ValueError as e:
        raise UserError(f"{cfg.DATA.PATH}: MOCO.K {cfg.MOCO.K} with MOCO.MECHANISM {cfg.MOCO.MECHANISM}: {e}") from None
    if channels_last:
        moco = moco.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, moco)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    dataset = ImageDataset(samples, moco_transform(cfg), seed=cfg.TRAIN.SEED, indexed=True)
    sampler = ResumableSampler(dataset, shuffle=True, seed=cfg.TRAIN.SEED)
    iters_per_epoch = len(sampler.inner) // per_rank
    if iters_per_epoch == 0:
        raise UserError(f"{cfg.DATA.PATH}: {len(samples)} images give no full batch of {cfg.SOLVER.BATCH_SIZE}")
    total = iters_per_epoch * cfg.SOLVER.EPOCHS

    epoch, position, iteration = 0, 0, 0
    last = last_checkpoint(out_dir) if resume else None
    if main:  # before the checkpoint is read: a resume onto other inputs is named, not a shape mismatch
        checkpoint.claim_inputs(out_dir, checkpoint.run_inputs(cfg, samples), resuming=last is not None)
    if last is not None:
        state = checkpoint.read_resume_state(last)
        moco.load_state_dict({k.removeprefix("module."): v for k, v in state["state_dict"].items()})
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        epoch, position, iteration = state["epoch"], state["epoch_position"], state["iteration"]
        checkpoint.set_rng_state(state["rng"])
    # no buffer broadcast each step: the queue and the memory bank (655 MB at ImageNet scale) are
    # the same on every rank by construction, and BN statistics are saved from rank 0 either way
    model = (DistributedDataParallel(moco, device_ids=[device.index] if on_gpu else None, broadcast_buffers=False)
             if world > 1 else moco)
    if main:
        write_text(out_dir / "config.yaml", cfg.dump())
    log = JsonlLog(out_dir / "metrics.jsonl", enabled=main)
    log.truncate_after("iter", iteration)
    progress = Progress("pretrain", total, start=iteration, enabled=main)

    def save(name: str, ep: int, pos: int) -> Path:
        checkpoint.refuse_divergence(loss, iteration, out_dir, moco)  # keep the last good file
        path = out_dir / name
        if main:
            path = checkpoint.save(out_dir, name, _state(cfg, moco, optimizer, scaler, ep, pos, iteration))
        mdist.barrier()
        return path

    final = out_dir / f"checkpoint_{cfg.SOLVER.EPOCHS:04d}.pth.tar"
    loss = torch.zeros(())  # the latest loss, checked before each save
    preempt.install()  # under the SLURM launcher: its signals save and stop (mocobench/preempt.py)
    moco.train()
    while epoch < cfg.SOLVER.EPOCHS:
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch, skip=position * per_rank)
        loader = make_loader(dataset, per_rank, sampler, cfg.DATA.NUM_WORKERS, drop_last=True, pin_memory=on_gpu)
        tick = time.perf_counter()
        with user_errors_from_workers():
            for (im_q, im_k), _, index in loader:
                im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
                if channels_last:
                    im_q, im_k = (t.contiguous(memory_format=torch.channels_last) for t in (im_q, im_k))
                loss, logits, labels = train_step(model, optimizer, scaler, im_q, im_k, amp, index.to(device))
                iteration, position = iteration + 1, position + 1
                if iteration % cfg.TRAIN.LOG_PERIOD == 0 or iteration == total:
                    checkpoint.refuse_divergence(loss, iteration, out_dir)
                    now = time.perf_counter()
                    speed = cfg.SOLVER.BATCH_SIZE * cfg.TRAIN.LOG_PERIOD / max(now - tick, 1e-9)
                    values = dict(epoch=epoch, loss=loss.item(), acc1=100 * instance_accuracy(logits, labels),
                                  acc1_batch=100 * moco.batch_top1.item(), key_cos=key_similarity(moco.keys()),
                                  lr=lr, images_per_s=speed)
                    log.write(iter=iteration, **values)
                    progress.report(iteration, **values)
                    tick = now
                period = cfg.CHECKPOINT.PERIOD_ITERS
                if period and iteration % period == 0 and position < iters_per_epoch:
                    save("checkpoint_last.pth.tar", epoch, position)
                if position < iters_per_epoch and preempt.requested(device):
                    preempt.stop("pretrain", save("checkpoint_last.pth.tar", epoch, position), iteration)
        epoch, position = epoch + 1, 0
        knn_period = cfg.KNN.PERIOD_EPOCHS
        if cfg.KNN.DATA and (epoch == cfg.SOLVER.EPOCHS or (knn_period and epoch % knn_period == 0)):
            if main:
                log.write(iter=iteration, epoch=epoch, **knn_evaluate(moco.encoder_q, cfg, cfg.KNN.DATA, device))
            mdist.barrier()
        stopping = epoch < cfg.SOLVER.EPOCHS and preempt.requested(device)
        if epoch == cfg.SOLVER.EPOCHS or epoch % cfg.CHECKPOINT.PERIOD_EPOCHS == 0:
            saved = save(f"checkpoint_{epoch:04d}.pth.tar", epoch, 0)
        elif cfg.CHECKPOINT.PERIOD_ITERS or stopping:
            saved = save("checkpoint_last.pth.tar", epoch, 0)
        if stopping:
            preempt.stop("pretrain", saved, iteration)
    return final
