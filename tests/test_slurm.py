"""run-all and pretraining on a real SLURM: munge + slurmctld + slurmd on this machine
(tests/slurm_cluster.sh: installs slurm-wlm when missing, root only; skipped with its reason
otherwise), one partition with a 1-minute MaxTime, so time limits are hit within a test.

Marked ``slurm``; the sbatch mapping and argv helpers are also checked without a SLURM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import one_line_refusals
from mocobench.results.launch import ClusterParams, resume_argv, sbatch_refusal, transfer_argv

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "slurm_cluster.sh"
# SLURM's warning 45 s before the 1-minute limit: 15-45 s into each allocation (its checks are 30 s apart)
CPU_JOB = ["--launcher", "slurm", "--gpus", "0", "--cpus-per-task", "1", "--time", "1", "--signal-delay", "45"]


# ---- without a SLURM ----------------------------------------------------------------

@pytest.mark.parametrize("said, flag", [
    ("sbatch: error: Batch job submission failed: Invalid generic resource (gres) specification", "--gpus"),
    ("sbatch: error: invalid partition specified: nope\n"
     "sbatch: error: Batch job submission failed: Invalid partition name specified", "--partition"),
    ("sbatch: error: Batch job submission failed: Requested time limit is invalid (missing or exceeds some limit)",
     "--time"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available", "--cpus-per-task"),
])
def test_sbatch_refusal_names_the_flag_in_one_line(said, flag):
    message = str(sbatch_refusal(RuntimeError(said), ClusterParams(gpus_per_node=0, tasks_per_node=1)))
    assert flag in message and "\n" not in message and "sbatch refused the job" in message


def test_resume_goes_after_the_command_not_after_its_overrides():
    argv = transfer_argv(["--config", "c.yaml", "SOLVER.MAX_ITER", "4"])
    assert resume_argv(argv)[3:6] == ["transfer", "--resume", "--config"]
    assert resume_argv(resume_argv(argv)) == resume_argv(argv)


# ---- on a real SLURM ----------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=600)
    if start.returncode == 77:
        pytest.skip(start.stderr.strip().splitlines()[-1] if start.stderr.strip() else "no SLURM here")
    assert start.returncode == 0, start.stdout + start.stderr
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def det(tmp_path_factory) -> Path:
    """Synthetic VOC data and two detection tables: tiny (4 iterations) and long (about 30 s
    of training on one core, longer than the 15-45 s an allocation gets before its warning)."""
    pytest.importorskip("mocobench.transfer.datasets.synth")
    from engine_fixtures import write_tiny_config
    from mocobench.transfer.datasets.synth import write_synthetic

    root = tmp_path_factory.mktemp("det")
    write_synthetic(root / "data", 0, "tiny")
    write_tiny_config(root / "tiny.yaml")
    text = (root / "tiny.yaml").read_text()
    long = (text.replace("MAX_ITER: 4", "MAX_ITER: 700").replace("CHECKPOINT_PERIOD: 2", "CHECKPOINT_PERIOD: 0")
            .replace("STEPS: (3,)", "STEPS: (500,)"))
    assert long != text
    (root / "long.yaml").write_text(long)
    for name in ("tiny", "long"):
        (root / f"t_{name}.yaml").write_text(f"CONFIG: {{RGB: {name}.yaml}}\nTRIALS: 1\nMETRICS: [bbox/AP50]\n")
    (root / "inits.yaml").write_text("random: {}\n")
    return root


def run_all_argv(det: Path, table: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mocobench", "run-all", "--tables", str(det / f"t_{table}.yaml"),
            "--inits", str(det / "inits.yaml"), "--output", str(out), "--data-root", str(det / "data"), *extra]


def run(argv: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def start(argv: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, **{"stderr": subprocess.STDOUT, **kw})


def results(run_dir: Path) -> dict:
    """metrics.json without its wall time (all else is a function of the inputs)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics["meta"].pop("time_s")
    metrics["meta"].pop("config")
    return metrics


def rank_log(run_dir: Path, rank: int = 0) -> str:
    return (run_dir / f"run_all.rank{rank}.log").read_text()


@pytest.fixture(scope="module")
def reference(det, tmp_path_factory):
    """The long run uninterrupted, on this machine (started at once: it runs beside the SLURM jobs)."""
    out = tmp_path_factory.mktemp("reference")
    proc = start(run_all_argv(det, "long", out))
    run_dir = out / "t_long" / "random" / "seed0"

    def wait() -> dict:
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout
        return results(run_dir)
    yield wait
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.slurm
def test_run_all_finishes_and_a_rerun_while_its_job_runs_does_not_submit_it_twice(slurm, det, tmp_path):
    out = tmp_path / "out"
    first = start(run_all_argv(det, "tiny", out, *CPU_JOB), start_new_session=True)
    for line in first.stdout:
        if (m := re.search(r"submitted job (\d+)", line)):
            break
    else:
        pytest.fail(f"run-all submitted nothing: {first.wait()}")
    os.killpg(first.pid, signal.SIGKILL)  # a closed login shell: run-all dies, its SLURM job does not
    first.wait()
    job_id = m.group(1)

    again = run(run_all_argv(det, "tiny", out, *CPU_JOB))
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(rf"job {job_id} \(submitted .*\) is still \w+: waiting for it, not submitting again", again.stdout)
    assert "submitted job" not in again.stdout and "1 finished now" in again.stdout
    run_dir = out / "t_tiny" / "random" / "seed0"
    assert json.loads((run_dir / ".slurm_job.json").read_text())["job_id"] == job_id
    assert results(run_dir)["bbox"]

    done = run(run_all_argv(det, "tiny", out, *CPU_JOB))  # finished: nothing submitted
    assert done.returncode == 0 and "1 already done, 0 finished now" in done.stdout, done.stdout + done.stderr


@pytest.mark.slurm
def test_sbatch_refusals_are_one_line_naming_the_flag(slurm, det, tmp_path):
    cases = {"gpus": ["--gpus", "3"], "partition": ["--partition", "nope"], "time": ["--time", "5"],
             "cpus": ["--cpus-per-task", "64"]}
    procs = {k: start(run_all_argv(det, "tiny", tmp_path / k, *CPU_JOB, *flags), stderr=subprocess.PIPE)
             for k, flags in cases.items()}
    done = {}
    for label, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        done[label] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    expected = {"gpus": "check --gpus", "partition": "check --partition", "time": "check --time",
                "cpus": "--cpus-per-task"}
    assert not one_line_refusals(done, expected)
    assert "Invalid partition name specified" in done["partition"].stderr
    squeue = subprocess.run(["squeue", "-h"], capture_output=True, text=True)
    assert squeue.stdout.strip() == ""


@pytest.mark.slurm
def test_time_limit_saves_requeues_and_resumes_to_the_same_metrics(slurm, det, tmp_path, reference):
    out = tmp_path / "out"
    res = run(run_all_argv(det, "long", out, *CPU_JOB))
    assert res.returncode == 0, res.stdout + res.stderr
    run_dir = out / "t_long" / "random" / "seed0"
    log = rank_log(run_dir)
    assert re.search(r"transfer: SIGUSR2: saved \S+ at iteration \d+; stopping to be requeued", log), log
    assert "transfer: resuming from" in log
    assert results(run_dir) == reference()  # bit-identical bbox numbers and meta


@pytest.mark.slurm
@pytest.mark.slow  # about 80 s: run with -m slow
def test_scontrol_requeue_mid_job_saves_and_resumes_to_the_same_metrics(slurm, det, tmp_path, reference):
    out = tmp_path / "out"
    proc = start(run_all_argv(det, "long", out, *CPU_JOB))
    run_dir = out / "t_long" / "random" / "seed0"
    deadline = time.time() + 120
    while not re.search(r"^transfer \d+/700", rank_log(run_dir) if (run_dir / "run_all.rank0.log").exists() else "",
                        re.M):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.5)
    time.sleep(2)  # some iterations in
    job_id = json.loads((run_dir / ".slurm_job.json").read_text())["job_id"]
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    stdout, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout
    log = rank_log(run_dir)
    assert re.search(r"transfer: SIGTERM: saved \S+ at iteration \d+; stopping to be requeued", log), log
    assert "transfer: resuming from" in log
    assert results(run_dir) == reference()


@pytest.mark.slurm
def test_two_task_job_is_one_two_rank_ddp_run_like_torchrun(slurm, det, tmp_path):
    two = ["--gpus", "0", "--tasks-per-node", "2"]
    # the warning 20 s before the limit: a busy machine can take over 15 s to start the two tasks
    # interpreters, and a warning before submitit's handler is in place kills them
    on_slurm = start(run_all_argv(det, "tiny", tmp_path / "slurm", *CPU_JOB, "--tasks-per-node", "2",
                                  "--signal-delay", "20"))
    torchrun = run(run_all_argv(det, "tiny", tmp_path / "torchrun", "--launcher", "torchrun", *two))
    stdout, _ = on_slurm.communicate(timeout=600)
    assert on_slurm.returncode == 0 and "world size 2" in stdout, stdout
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    a, b = (tmp_path / k / "t_tiny" / "random" / "seed0" for k in ("slurm", "torchrun"))
    assert results(a) == results(b) and results(a)["meta"]["world_size"] == 2
    assert (a / "run_all.rank1.log").is_file()


@pytest.mark.slurm
@pytest.mark.slow  # about a minute: run with -m slow
def test_pretrain_job_requeued_mid_run_resumes_to_the_same_weights(slurm, tmp_path, monkeypatch):
    """A sweep's pretraining job (``mocobench pretrain ... --resume``) through the SLURM launcher,
    requeued by ``scontrol requeue`` after some iterations, ends with the weights of a straight run."""
    import torch
    from pretrain_tiny import write_images, write_tiny_config
    from mocobench.results.launch import LaunchSpec, launch_submitit, mocobench_argv

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job gets this environment: as many threads as the straight run
    data, config = tmp_path / "images", write_tiny_config(tmp_path / "tiny.yaml")
    write_images(data, 24, seed=0)  # 3 iterations per epoch

    def argv(out: Path) -> list[str]:
        return mocobench_argv("pretrain", ["--config", str(config), "--data", str(data), "--output-dir", str(out),
                                           "--resume", "SOLVER.EPOCHS", "20", "CHECKPOINT.PERIOD_ITERS", "0",
                                           "CHECKPOINT.PERIOD_EPOCHS", "10", "TRAIN.LOG_PERIOD", "3"])
    straight = start(argv(tmp_path / "straight"))
    cut = tmp_path / "cut"
    params = ClusterParams(gpus_per_node=0, tasks_per_node=1, cpus_per_task=1, timeout_min=1, signal_delay_s=45)

    def requeue_when_training() -> None:
        deadline = time.time() + 120
        while not (cut / "metrics.jsonl").is_file() or len((cut / "metrics.jsonl").read_text().splitlines()) < 2:
            assert time.time() < deadline, "pretraining did not start"
            time.sleep(0.2)
        job_id = json.loads((cut / ".slurm_job.json").read_text())["job_id"]
        subprocess.run(["scontrol", "requeue", job_id], check=True)

    import threading
    trigger = threading.Thread(target=requeue_when_training)
    trigger.start()
    codes = launch_submitit([LaunchSpec("sweep/run/pretrain", cut, argv(cut))], params, tmp_path / ".submitit")
    trigger.join()
    assert straight.wait(timeout=600) == 0, straight.stdout.read()
    assert codes == {"sweep/run/pretrain": 0}, rank_log(cut)
    log = rank_log(cut)
    assert re.search(r"pretrain: SIGTERM: saved \S+checkpoint_last.pth.tar at iteration \d+", log), log
    a, b = (torch.load(d / "checkpoint_0020.pth.tar", map_location="cpu", weights_only=False)
            for d in (tmp_path / "straight", cut))
    assert a["iteration"] == b["iteration"] == 60
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key


@pytest.mark.slurm
@pytest.mark.slow  # about a minute: run with -m slow
def test_two_task_pretrain_job_is_one_two_rank_ddp_run_like_torchrun(slurm, tmp_path, monkeypatch):
    """Pretraining as one SLURM job of 2 tasks ends with the weights of torchrun at 2 processes."""
    import torch
    from pretrain_tiny import write_images, write_tiny_config
    from mocobench.results.launch import LaunchSpec, launch_submitit, mocobench_argv, torchrun_argv

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data, config = tmp_path / "images", write_tiny_config(tmp_path / "tiny.yaml")
    write_images(data, 16, seed=0)

    def args(out: Path) -> list[str]:
        return ["--config", str(config), "--data", str(data), "--output-dir", str(out), "SOLVER.EPOCHS", "2",
                "MOCO.SPLIT_BN_GROUPS", "1", "CHECKPOINT.PERIOD_ITERS", "0"]
    torchrun = run(torchrun_argv(2, args(tmp_path / "torchrun"), command="pretrain"))
    assert torchrun.returncode == 0, torchrun.stdout + torchrun.stderr
    params = ClusterParams(gpus_per_node=0, tasks_per_node=2, cpus_per_task=1, timeout_min=1, signal_delay_s=20)
    out = tmp_path / "slurm"
    codes = launch_submitit([LaunchSpec("pretrain", out, mocobench_argv("pretrain", args(out)))], params,
                            tmp_path / ".submitit")
    assert codes == {"pretrain": 0}, rank_log(out)
    a, b = (torch.load(d / "checkpoint_0002.pth.tar", map_location="cpu", weights_only=False)
            for d in (tmp_path / "torchrun", out))
    assert a["iteration"] == b["iteration"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
