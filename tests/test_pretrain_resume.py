"""Exact resume: a run SIGKILLed mid-epoch and resumed equals the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mocobench.progress import read_jsonl
from pretrain_tiny import ROOT, write_images, write_tiny_config


def pretrain_cmd(config, data, out, *extra) -> list[str]:
    return [sys.executable, "-m", "mocobench", "pretrain", "--config", str(config), "--data", str(data),
            "--output-dir", str(out), *extra]


# the memory bank's entries and its sampled negatives must come back exactly too
@pytest.mark.parametrize("mechanism", [[], ["MOCO.MECHANISM", "memory_bank"]], ids=["moco", "memory_bank"])
def test_killed_and_resumed_run_equals_straight_run(tmp_path, cli, mechanism):
    data = tmp_path / "images"
    write_images(data, 24, seed=0)  # 3 iterations per epoch, 12 in all
    config = write_tiny_config(tmp_path / "tiny.yaml")

    straight = cli("pretrain", "--config", config, "--data", data, "--output-dir", tmp_path / "straight", *mechanism)
    assert straight.returncode == 0, straight.stderr

    killed_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(pretrain_cmd(config, data, killed_dir, *mechanism), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed_dir / "checkpoint_last.pth.tar").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (killed_dir / "checkpoint_0004.pth.tar").exists(), "the run finished before the kill"
    stopped_at = torch.load(killed_dir / "checkpoint_last.pth.tar", weights_only=True)["iteration"]
    assert 0 < stopped_at < 12

    resumed = cli("pretrain", "--config", config, "--data", data, "--output-dir", killed_dir, "--resume", *mechanism)
    assert resumed.returncode == 0, resumed.stderr

    a = torch.load(tmp_path / "straight" / "checkpoint_0004.pth.tar", weights_only=True)
    b = torch.load(killed_dir / "checkpoint_0004.pth.tar", weights_only=True)
    assert a["iteration"] == b["iteration"] == 12
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert ("module.bank" in a["state_dict"]) == bool(mechanism)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    losses = lambda d: [(e["iter"], e["loss"]) for e in read_jsonl(d / "metrics.jsonl") if "loss" in e]  # noqa: E731
    assert losses(tmp_path / "straight") == losses(killed_dir)
