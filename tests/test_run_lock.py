"""One process per run folder: a second run is refused at once naming the holder, a killed
holder never blocks, a killed write's temp file goes, a refused new run leaves no folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from engine_fixtures import DEMO, TINY, needs_d2
from mocobench.transfer.datasets.synth import write_synthetic
from pretrain_tiny import write_tiny_config

HOLD = ("import sys, time; from pathlib import Path; from mocobench.run_lock import run_folder, run_folders\n"
        "folder = Path(sys.argv[1])\n"
        "held = run_folders([folder], 'test') if sys.argv[2:] == ['run-all'] else run_folder(folder, 'test')\n"
        "with held:\n    print('held', flush=True); time.sleep(120)\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(out, seed=0, scale="tiny")
    return out


def hold(folder: Path, *run_all: str) -> subprocess.Popen:
    """Another process holding the folder's lock, or with "run-all" its run-all lock (until killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *run_all], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def transfer_argv(out: Path, data: Path, seed: int, *opts: str) -> list[str]:
    return [sys.executable, "-m", "mocobench", "transfer", "--config", str(DEMO / "demo_voc_C4.yaml"),
            "--output-dir", str(out), "--data-root", str(data), "--seed", str(seed), *TINY, *opts]


def test_second_transfer_is_refused_at_once_and_the_first_is_intact(tmp_path, data):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # long enough (seconds) to still be training when the second interpreter has started
    first = subprocess.Popen(transfer_argv(run, data, 1, "SOLVER.MAX_ITER", "150"), cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / ".lock").is_file() or b"pid" not in (run / ".lock").read_bytes():
        assert time.time() < deadline and first.poll() is None, first.communicate()
        time.sleep(0.1)
    t0 = time.time()
    second = subprocess.run(transfer_argv(run, data, 2, "SOLVER.MAX_ITER", "30"), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2 and time.time() - t0 < 30 and first.poll() is None
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert json.loads((run / "metrics.json").read_text())["meta"]["seed"] == 1
    assert all(json.loads(line)["iter"] < 150 for line in (run / "metrics.jsonl").read_text().splitlines())


@needs_d2
def test_the_detectron2_engine_is_refused_a_held_folder(cli, tmp_path, data):
    run = tmp_path / "run"
    holder = hold(run)
    try:
        done = cli("transfer", "--engine", "detectron2", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", run,
                   "--data-root", data, *TINY)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 2 and f"pid {holder.pid}" in done.stderr and "Traceback" not in done.stderr
    assert not (run / "metrics.json").exists() and not (run / "config.yaml").exists()


def test_a_killed_holder_never_blocks_and_its_temp_files_go(cli, tmp_path):
    folder = tmp_path / "run"
    holder = hold(folder)
    refused = cli("pretrain", "--config", write_tiny_config(tmp_path / "c.yaml"), "--data", tmp_path,
                  "--output-dir", folder)
    assert refused.returncode == 2 and f"pid {holder.pid}" in refused.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    stale = folder / ".checkpoint_last.pth.tar.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    proc = hold(folder)  # the kernel released the dead holder's lock
    proc.kill()
    proc.wait()
    assert not stale.exists()


def test_a_refused_new_run_leaves_no_folder(cli, tmp_path, data):
    empty = tmp_path / "no_images"
    empty.mkdir()
    out = tmp_path / "new" / "run"
    r = cli("pretrain", "--config", write_tiny_config(tmp_path / "c.yaml"), "--data", empty, "--output-dir", out)
    assert r.returncode == 2 and "no images" in r.stderr
    assert not out.exists()


def test_run_all_sharing_a_job_with_another_is_refused_and_leaves_nothing(cli, tmp_path):
    """All of its jobs' folders or none: held elsewhere, the second job's folder refuses the run,
    and the first job's folder, made for its lock, goes again."""
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {}\nscratch: {}\n")
    out = tmp_path / "out"
    held = out / "demo_voc_R50_C4" / "scratch" / "seed0"
    holder = hold(held, "run-all")
    try:
        r = cli("run-all", "--inits", inits, "--tables", "demo_voc_R50_C4", "--output", out)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and f"{held}: in use by pid {holder.pid}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (out / "demo_voc_R50_C4" / "random").exists()
    assert not list(out.glob("demo_voc_R50_C4/*/*/job.json"))
