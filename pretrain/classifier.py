"""Training a ResNet classifier on a labelled ImageFolder: the loop shared by the linear
probe (frozen trunk, BN in eval, only fc trained) and the supervised-init trainer (all
layers trained). Resumable per epoch; metrics.jsonl per log step; val top-1 per epoch.
Under DDP every rank evaluates the whole val split (small at the scales this runs on).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import SequentialSampler

from mocobench import UserError
from mocobench import dist as mdist
from mocobench.atomic import write_json, write_text
from mocobench.checkpoints import last_checkpoint
from mocobench.progress import JsonlLog, Progress
from mocobench.pretrain import checkpoint
from mocobench.pretrain.augment import classify_train_transform, eval_transform
from mocobench.pretrain.data import ImageDataset, ResumableSampler, labelled_splits, make_loader, user_errors_from_workers
from mocobench.pretrain.schedule import learning_rate


@torch.no_grad()
def top1(net: nn.Module, loader, device: torch.device) -> float:
    was_training = net.training
    net.eval()
    correct = seen = 0
    with user_errors_from_workers():
        for images, labels in loader:
            correct += int((net(images.to(device)).argmax(1).cpu() == labels).sum())
            seen += labels.numel()
    net.train(was_training)
    return 100.0 * correct / max(seen, 1)


def train_classifier(cfg: CfgNode, net: nn.Module, params: Iterable[nn.Parameter], out_dir: Path,
                     resume: bool, frozen_trunk: bool, label: str, device: torch.device,
                     report: str = "last", weights: str | None = None) -> dict:
    """Train ``params`` of ``net`` with cross-entropy; returns {"top1": val % of the
    ``report``ed epoch, "reported": "best" | "last", "top1_best", "best_epoch", "top1_last",
    "epochs", "classes"}.

    With ``frozen_trunk`` the network stays in eval mode throughout (the linear protocol:
    BN statistics of the pretrained trunk are not updated). ``report="best"`` is the
    authors' main_lincls.py: the best val top-1 over the epochs (selected on val itself).
    ``weights`` (a probe's trunk) is digested with the config and images, so a resume onto
    other inputs is refused.
    """
    world, main = mdist.world_size(), mdist.is_main()
    if cfg.SOLVER.BATCH_SIZE % world:
        raise UserError(f"SOLVER.BATCH_SIZE {cfg.SOLVER.BATCH_SIZE} is not divisible by the {world} processes")
    per_rank = cfg.SOLVER.BATCH_SIZE // world
    train_samples, val_samples, classes = labelled_splits(cfg.DATA.PATH)
    train_set = ImageDataset(train_samples, classify_train_transform(cfg), seed=cfg.TRAIN.SEED)
    val_set = ImageDataset(val_samples, eval_transform(cfg), seed=cfg.TRAIN.SEED)
    sampler = ResumableSampler(train_set, shuffle=True, seed=cfg.TRAIN.SEED)
    iters_per_epoch = len(sampler.inner) // per_rank
    if iters_per_epoch == 0:
        raise UserError(f"{cfg.DATA.PATH}/train: {len(train_samples)} images give no full batch of "
                        f"{cfg.SOLVER.BATCH_SIZE}")
    val_loader = make_loader(val_set, per_rank, SequentialSampler(val_set), cfg.DATA.NUM_WORKERS, drop_last=False)
    optimizer = torch.optim.SGD(params, lr=learning_rate(cfg, 0), momentum=cfg.SOLVER.MOMENTUM,
                                weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    epoch = iteration = best_epoch = 0
    best = float("nan")
    last = last_checkpoint(out_dir) if resume else None
    if main:  # before the checkpoint is read: a resume onto other inputs is named, not a shape mismatch
        inputs = checkpoint.run_inputs(cfg, train_samples + val_samples, weights)
        checkpoint.claim_inputs(out_dir, inputs, resuming=last is not None)
    if last is not None:
        state = checkpoint.read_resume_state(last)
        net.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, iteration = state["epoch"], state["iteration"]
        best, best_epoch = state.get("best_top1", best), state.get("best_epoch", 0)
        checkpoint.set_rng_state(state["rng"])
    model = (DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
             if world > 1 else net)
    if main:
        write_text(out_dir / "config.yaml", cfg.dump())
    log = JsonlLog(out_dir / "metrics.jsonl", enabled=main)
    log.truncate_after("iter", iteration)
    total = iters_per_epoch * cfg.SOLVER.EPOCHS
    progress = Progress(label, total, start=iteration, enabled=main)
    net.train(not frozen_trunk)
    acc = float("nan")
    loss = torch.zeros(())  # the latest loss, checked before each save
    while epoch < cfg.SOLVER.EPOCHS:
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch)
        loader = make_loader(train_set, per_rank, sampler, cfg.DATA.NUM_WORKERS, drop_last=True)
        tick = time.perf_counter()
        with user_errors_from_workers():
            for images, labels in loader:
                loss = F.cross_entropy(model(images.to(device)), labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                iteration += 1
                if iteration % cfg.TRAIN.LOG_PERIOD == 0:
                    checkpoint.refuse_divergence(loss, iteration, out_dir)
                    now = time.perf_counter()
                    values = dict(epoch=epoch, loss=loss.item(), lr=lr,
                                  images_per_s=cfg.SOLVER.BATCH_SIZE * cfg.TRAIN.LOG_PERIOD / max(now - tick, 1e-9))
                    log.write(iter=iteration, **values)
                    progress.report(iteration, **values)
                    tick = now
        epoch += 1
        acc = top1(net, val_loader, device)
        if not acc <= best:  # also the first epoch (best is NaN)
            best, best_epoch = acc, epoch
        net.train(not frozen_trunk)
        log.write(iter=iteration, epoch=epoch, val_top1=acc)
        checkpoint.refuse_divergence(loss, iteration, out_dir, net)  # keep the last good file
        if main:
            checkpoint.save(out_dir, "checkpoint_last.pth.tar", {
                "epoch": epoch, "iteration": iteration, "state_dict": net.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": checkpoint.rng_state(), "config": cfg.dump(),
                "best_top1": best, "best_epoch": best_epoch})
        mdist.barrier()
    if acc != acc:  # resumed after the last epoch: evaluate what was trained
        acc = top1(net, val_loader, device)
    result = {"top1": best if report == "best" else acc, "reported": report, "top1_best": best,
              "best_epoch": best_epoch, "top1_last": acc, "epochs": cfg.SOLVER.EPOCHS, "classes": classes}
    if main:
        write_json(out_dir / "metrics.json", result)
    return result
