"""Shuffle-BN across real processes (gloo on CPU) and a 2-process training run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mocobench.resnet import ResNetShape
from mocobench.pretrain.moco import build_encoder
from mocobench.pretrain.shuffle_bn import gather_batches, gather_with_grad, shuffle_batch
from pretrain_tiny import ROOT, write_images, write_tiny_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shuffle_worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    encoder = build_encoder(ResNetShape(50, 8, 16, 4), dim=16, mlp=True).eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(10 + rank))
    torch.manual_seed(123 + rank)  # only rank 0's permutation may count
    shuffled, unshuffle = shuffle_batch(x)
    everyone = gather_batches(x)
    # the slice is drawn from both ranks' samples, not just this rank's
    rows = [int((everyone - s).abs().flatten(1).sum(1).argmin()) for s in shuffled]
    all_rows = [None, None]
    dist.all_gather_object(all_rows, rows)
    assert sorted(all_rows[0] + all_rows[1]) == list(range(8))
    assert all_rows[0] != [0, 1, 2, 3]
    with torch.no_grad():
        direct = encoder(x)
        via_shuffle = unshuffle(encoder(shuffled))
    assert torch.allclose(via_shuffle, direct, atol=1e-5), (via_shuffle - direct).abs().max()
    dist.destroy_process_group()


def test_keys_through_shuffle_and_unshuffle_equal_unshuffled_keys():
    mp.spawn(_shuffle_worker, args=(free_port(),), nprocs=2, join=True)


def _gather_grad_worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x = torch.full((2, 3), float(rank + 1), requires_grad=True)
    weights = torch.arange(12.0).view(4, 3) * (rank + 1)  # each rank weighs all four rows its own way
    (gather_with_grad(x) * weights).sum().backward()
    # d(sum of both ranks' losses)/dx: this rank's rows, weighed by rank 0 (x1) and rank 1 (x2)
    assert torch.equal(x.grad, torch.arange(12.0).view(4, 3)[2 * rank:2 * rank + 2] * 3)
    dist.destroy_process_group()


def test_end_to_end_keys_gathered_across_processes_get_every_ranks_gradient():
    mp.spawn(_gather_grad_worker, args=(free_port(),), nprocs=2, join=True)


def test_two_process_training_runs(tmp_path):
    data = tmp_path / "images"
    write_images(data, 16, seed=0)
    config = write_tiny_config(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mocobench", "pretrain", "--config", str(config), "--data", str(data), "--output-dir", str(out),
         "SOLVER.EPOCHS", "1", "MOCO.SPLIT_BN_GROUPS", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "checkpoint_0001.pth.tar", weights_only=True)
    # 16 images / global batch 8 = 2 steps; each step enqueues the keys of both ranks
    assert state["iteration"] == 2
    assert int(state["state_dict"]["module.queue_ptr"]) == (2 * 8) % 16
    assert (out / "metrics.jsonl").read_text().count('"loss"') == 2


@pytest.mark.slow  # two 2-process runs, ~15 s each
@pytest.mark.parametrize("mechanism, K", [("end_to_end", "8"), ("memory_bank", "8")])
def test_two_process_runs_of_the_other_mechanisms(tmp_path, mechanism, K):
    """End-to-end keys gathered with gradients across processes; bank entries updated from every rank."""
    data = tmp_path / "images"
    write_images(data, 16, seed=0)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "mocobench", "pretrain", "--config", str(write_tiny_config(tmp_path / "tiny.yaml")), "--data",
         str(data), "--output-dir", str(out), "SOLVER.EPOCHS", "1", "MOCO.SPLIT_BN_GROUPS", "1",
         "MOCO.MECHANISM", mechanism, "MOCO.K", K],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(out / "checkpoint_0001.pth.tar", weights_only=True)["state_dict"]
    if mechanism == "memory_bank":
        # one unit-norm entry per image, saved from rank 0 after updates gathered from both ranks
        assert torch.allclose(state["module.bank"].norm(dim=1), torch.ones(16), atol=1e-5)
