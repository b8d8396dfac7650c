"""`mocobench transfer` on the torchvision engine, end to end on tiny synthetic data:
run dir contents, exact resume after SIGKILL, and clear refusals of bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from engine_fixtures import DEMO, TINY
from mocobench.transfer.datasets.synth import write_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(out, seed=0, scale="tiny")
    return out


def transfer(cli, config, out, data, *extra, opts=()):
    return cli("transfer", "--config", DEMO / f"{config}.yaml", "--output-dir", out, "--data-root", data,
               "--seed", "1", *extra, *TINY, *opts)


@pytest.mark.parametrize("arch", ["demo_voc_C4", "demo_coco_FPN_mask",
                                  pytest.param("demo_voc_DC5", marks=pytest.mark.slow),
                                  pytest.param("demo_coco_C4_mask", marks=pytest.mark.slow)])
def test_job_writes_run_dir(cli, tmp_path, data, arch):
    r = transfer(cli, arch, tmp_path / "run", data)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"AP", "AP50", "AP75"} <= set(metrics["bbox"])
    assert ("segm" in metrics) == ("mask" in arch)
    assert metrics["meta"]["engine"] == "torchvision" and metrics["meta"]["max_iter"] == 4
    assert metrics["meta"]["seed"] == 1
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["iter"] == 3 and "loss_cls" in log[-1] and "lr" in log[-1]
    assert (run / "model_0000001.pth").is_file() and (run / "model_final.pth").is_file()
    assert (run / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "SEED: 1" in (run / "config.yaml").read_text()


def test_sigkill_then_resume_matches_uninterrupted(cli, tmp_path, data):
    opts = ("SOLVER.MAX_ITER", "8", "SOLVER.STEPS", "(6,)", "SOLVER.CHECKPOINT_PERIOD", "3")
    full = transfer(cli, "demo_voc_C4", tmp_path / "full", data, opts=opts)
    assert full.returncode == 0, full.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "mocobench", "transfer", "--config", str(DEMO / "demo_voc_C4.yaml"),
            "--output-dir", str(tmp_path / "cut"), "--data-root", str(data), "--seed", "1", *TINY, *opts]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "cut" / "last_checkpoint").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    resumed = transfer(cli, "demo_voc_C4", tmp_path / "cut", data, "--resume", opts=opts)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a = json.loads((tmp_path / "full" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert a["bbox"] == b["bbox"]
    la = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert la[-1]["total_loss"] == lb[-1]["total_loss"]


def test_eval_only_and_rerun_needs_resume(cli, tmp_path, data):
    run = tmp_path / "run"
    assert transfer(cli, "demo_voc_C4", run, data).returncode == 0
    again = transfer(cli, "demo_voc_C4", run, data)
    assert again.returncode == 2 and "--resume" in again.stderr
    (run / "metrics.json").unlink()
    r = transfer(cli, "demo_voc_C4", run, data, "--eval-only", "--resume")
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "metrics.json").read_text())["meta"]["eval_only"] is True


@pytest.mark.parametrize("extra, opts, message", [
    (("--weights", "nowhere/R-50.pkl"), (), "weights file not found"),
    ((), ("MODEL.NO_SUCH_KEY", "1"), "unknown config key 'MODEL.NO_SUCH_KEY'"),
    ((), ("MODEL.KEYPOINT_ON", "True"), "MODEL.KEYPOINT_ON"),
    ((), ("DATASETS.TEST", "('voc_2009_test',)"), "VOC2009"),
])
def test_bad_input_exits_2_without_metrics(cli, tmp_path, data, extra, opts, message):
    r = transfer(cli, "demo_voc_C4", tmp_path / "run", data, *extra, opts=opts)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_precise_bn_runs_before_each_evaluation_and_is_checkpointed(cli, tmp_path, data):
    """detectron2's hook order: precise BN, checkpoint, evaluation, at every EVAL_PERIOD."""
    import torch

    opts = ("TEST.EVAL_PERIOD", "2", "TEST.PRECISE_BN.NUM_ITER", "3")
    r = transfer(cli, "demo_voc_C4", tmp_path / "run", data, opts=opts)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("precise BN over 3 batches") == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in log if "eval" in e] == [1]
    state = torch.load(tmp_path / "run" / "model_0000001.pth", weights_only=False)["model"]
    tracked = {int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    assert tracked == {5}  # every trained BN: 2 training steps, then the 3 precise-BN batches
