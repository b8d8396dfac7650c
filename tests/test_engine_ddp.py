"""Distributed training on CPU (gloo): synchronised BN across ranks, and a 2-process
`mocobench transfer` run under torchrun that ends with metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import ROOT
from engine_fixtures import DEMO, TINY
from mocobench.transfer.datasets.synth import write_synthetic


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sync_bn_worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from mocobench.transfer.engines.torchvision.norm import SyncBatchNorm2d

    torch.manual_seed(0)
    data = torch.randn(2, 6, 4, 5, 5) * torch.arange(1, 5).view(1, 1, 4, 1, 1)
    for naive in (False, True):
        bn = SyncBatchNorm2d(4, naive=naive)
        x = data[rank].clone().requires_grad_(True)
        bn(x).pow(2).sum().backward()
        results[(naive, rank)] = (bn.running_mean.clone(), bn.running_var.clone(), x.grad.clone())
    dist.destroy_process_group()


def test_sync_bn_matches_bn_over_all_ranks():
    results = mp.Manager().dict()
    mp.spawn(_sync_bn_worker, args=(_free_port(), results), nprocs=2)
    torch.manual_seed(0)
    data = torch.randn(2, 6, 4, 5, 5) * torch.arange(1, 5).view(1, 1, 4, 1, 1)
    ref = torch.nn.BatchNorm2d(4)
    x = torch.cat([data[0], data[1]]).requires_grad_(True)
    ref(x).pow(2).sum().backward()
    for rank in (0, 1):
        mean, var, grad = results[(False, rank)]
        assert torch.allclose(mean, ref.running_mean, atol=1e-6) and torch.allclose(var, ref.running_var, atol=1e-5)
        assert torch.allclose(grad, x.grad[6 * rank: 6 * rank + 6], atol=1e-4)
    # naive: equal-size batches make the mean of per-rank statistics the global one
    assert torch.allclose(results[(True, 0)][0], results[(True, 1)][0])
    assert torch.allclose(results[(True, 0)][0], ref.running_mean, atol=1e-6)


@pytest.mark.slow
def test_two_process_job_under_torchrun(tmp_path):
    data = tmp_path / "tiny"
    write_synthetic(data, seed=0, scale="tiny")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "-m", "mocobench", "transfer", "--config", str(DEMO / "demo_coco_FPN_mask.yaml"), "--output-dir", str(out),
           "--data-root", str(data), "--seed", "3", *TINY, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "0"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["world_size"] == 2 and "segm" in metrics
    # each rank saved its own BN statistics next to the checkpoint (identical after precise BN)
    stats = [torch.load(out / f"bn_stats_rank{r}.pth") for r in (0, 1)]
    assert stats[0].keys() == stats[1].keys() and len(stats[0]) > 0
    for key in stats[0]:
        assert torch.equal(stats[0][key], stats[1][key]), key
