"""run-all: job expansion, skip/resume, scaling, launchers (in turn; SLURM path via submitit's
local executor with real gloo DDP tasks) and, with the real engine, kill-and-rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mocobench.atomic import write_json
from mocobench.results.plan import scaling_overrides
from mocobench.results.launch import ClusterParams, LaunchSpec, launch_local, launch_submitit
from mocobench.results.runs import read_metrics
from mocobench.results.tables import FORMATS, load_inits, resolve_tables, table_files
from mocobench.transfer.config import load_detection_config

ROOT = Path(__file__).resolve().parents[1]
RUN_ALL = ROOT / "benchmarks" / "run_all.sh"
PAPER_TABLES = {"voc_R50_DC5_24k": 5, "voc_R50_C4_24k": 5, "voc07_R50_C4_9k": 5,
                "coco_R50_FPN_1x": 1, "coco_R50_FPN_2x": 1, "coco_R50_C4_1x": 1, "coco_R50_C4_2x": 1,
                "voc_semseg_R50_FCN": 5, "cityscapes_semseg_R50_FCN": 5, "coco_kp_R50_FPN_2x": 1}
METRICS = {"bbox": {"AP": 50.0, "AP50": 80.0, "AP75": 55.0}, "meta": {"seed": 0}}


def run_all(*args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(RUN_ALL), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


@pytest.fixture
def inits(tmp_path) -> Path:
    path = tmp_path / "inits.yaml"
    path.write_text("random: {}\nsupervised: {weights: R-50.pkl, format: BGR}\n"
                    "moco: {weights: moco.pkl, format: RGB}\n")
    return path


def test_dry_run_lists_every_job_of_the_paper_tables(tmp_path, inits):
    res = run_all("--dry-run", "--inits", inits, "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    expected = {f"{t}/{i}/seed{k}" for t, n in PAPER_TABLES.items() for i in ("random", "supervised", "moco")
                for k in range(n)}
    listed = set(re.findall(r"^\S+ +(\S+/\S+/seed\d+)", res.stdout, re.M))
    assert listed == expected and len(expected) == 90
    assert "90 jobs in 10 tables" in res.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_every_referenced_detection_config_exists_and_loads():
    if not (ROOT / "configs" / "detection").is_dir():
        pytest.skip("configs/detection/ not merged yet (engine branch)")
    for table in resolve_tables([p.stem for p in table_files()]):
        for fmt in FORMATS:
            if table.cfg.CONFIG[fmt]:
                cfg = load_detection_config(table.config_for(fmt))
                assert cfg.INPUT.FORMAT == fmt, (table.name, fmt)


def test_scaling_follows_reference_world_size(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("SOLVER: {IMS_PER_BATCH: 16, BASE_LR: 0.02, MAX_ITER: 24000, STEPS: [18000, 22000],"
                        " WARMUP_ITERS: 100, CHECKPOINT_PERIOD: 5000}\n")
    cfg = load_detection_config(cfg_file)
    over = scaling_overrides(cfg, reference=8, world_size=2)
    scaled = load_detection_config(cfg_file, over)
    s = scaled.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS), s.WARMUP_ITERS, s.CHECKPOINT_PERIOD) == \
        (4, 0.005, 96000, (72000, 88000), 400, 20000)
    assert s.REFERENCE_WORLD_SIZE == 2  # so an engine applying the rule itself does not scale twice
    assert scaling_overrides(cfg, reference=8, world_size=8) == []
    assert scaling_overrides(cfg, reference=0, world_size=1) == []


def write_table(tmp_path: Path, trials: int) -> Path:
    det = tmp_path / "det.yaml"
    det.write_text("INPUT: {FORMAT: RGB}\nSOLVER: {IMS_PER_BATCH: 16, BASE_LR: 0.02, MAX_ITER: 800, STEPS: [600]}\n")
    table = tmp_path / "tiny.yaml"
    table.write_text(f"CONFIG: {{RGB: det.yaml}}\nTRIALS: {trials}\nMETRICS: [bbox/AP50]\n"
                     "REFERENCE_WORLD_SIZE: 8\n")
    return table


def test_dry_run_states_skip_finished_and_resume_interrupted(tmp_path):
    table = write_table(tmp_path, trials=3)
    (tmp_path / "inits.yaml").write_text("moco: {weights: m.pkl, format: RGB}\n")
    out = tmp_path / "out"
    write_json(out / "tiny" / "moco" / "seed0" / "metrics.json", METRICS)
    (out / "tiny" / "moco" / "seed1").mkdir(parents=True)
    (out / "tiny" / "moco" / "seed1" / "last_checkpoint").write_text("model_0000099.pth")
    res = run_all("--dry-run", "--tables", table, "--inits", tmp_path / "inits.yaml", "--output", out)
    assert res.returncode == 0, res.stderr
    lines = {m.group(2): (m.group(1), m.group(3)) for m in
             re.finditer(r"^(\S+) +tiny/moco/(seed\d)[ \t]*(.*)$", res.stdout, re.M)}
    assert lines["seed0"] == ("done", "")
    assert lines["seed1"][0] == "resume" and "--resume" in lines["seed1"][1]
    assert lines["seed2"][0] == "new" and "--resume" not in lines["seed2"][1]
    cmd = lines["seed2"][1]
    assert f"--weights {tmp_path / 'm.pkl'}" in cmd and "--seed 2" in cmd and "--engine torchvision" in cmd
    assert "SOLVER.IMS_PER_BATCH 2 SOLVER.BASE_LR 0.0025 SOLVER.MAX_ITER 6400" in cmd  # 1 of 8 GPUs


def test_unknown_init_key_names_key_and_file(tmp_path):
    path = tmp_path / "inits.yaml"
    path.write_text("moco: {weight: m.pkl}\n")
    with pytest.raises(Exception, match=r"inits.yaml: init 'moco': unknown config key 'weight'"):
        load_inits(path)


def test_init_format_read_from_converted_weights(tmp_path):
    from mocobench.atomic import write_pickle

    write_pickle(tmp_path / "w.pkl", {"model": {}, "__mocobench__": {"input_format": "BGR"}})
    (tmp_path / "inits.yaml").write_text("sup: {weights: w.pkl}\n")
    assert load_inits(tmp_path / "inits.yaml")["sup"].format == "BGR"


def metrics_writer(fail: bool = False) -> list[str]:
    """A stand-in job: exit 1, or write a valid metrics.json into its run dir (argv[1])."""
    code = "import sys; sys.exit(1)" if fail else textwrap.dedent("""
        import json, sys, pathlib
        pathlib.Path(sys.argv[1], 'metrics.json').write_text(json.dumps(
            {'bbox': {'AP': 1.0, 'AP50': 2.0}, 'meta': {'seed': 0}}))""")
    return [sys.executable, "-c", code]


def test_local_launcher_runs_all_despite_a_failure(tmp_path):
    specs = [LaunchSpec("t/bad/seed0", tmp_path / "bad", metrics_writer(fail=True)),
             LaunchSpec("t/good/seed0", tmp_path / "good", [*metrics_writer(), str(tmp_path / "good")])]
    codes = launch_local(specs)
    assert codes == {"t/bad/seed0": 1, "t/good/seed0": 0}
    assert read_metrics(tmp_path / "good") is not None and read_metrics(tmp_path / "bad") is None


RENDEZVOUS_JOB = textwrap.dedent("""
    import os, sys, time, pathlib
    me, other = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    (me / 'started').write_text(os.environ['OMP_NUM_THREADS'])
    deadline = time.time() + 60
    while not (other / 'started').exists():  # only finishes if the other job runs at the same time
        if time.time() > deadline:
            sys.exit(3)
        time.sleep(0.05)""")


@pytest.mark.parametrize("parallel", [1, 2])
def test_local_launcher_parallel_runs_jobs_side_by_side(tmp_path, monkeypatch, parallel):
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    a, b = tmp_path / "a", tmp_path / "b"
    job = [sys.executable, "-c", RENDEZVOUS_JOB.replace("60", "60" if parallel == 2 else "1")]
    specs = [LaunchSpec("t/a", a, [*job, str(a), str(b)]), LaunchSpec("t/b", b, [*job, str(b), str(a)])]
    codes = launch_local(specs, parallel=parallel)
    if parallel == 2:  # both met, each on half of the 4 threads
        assert codes == {"t/a": 0, "t/b": 0}
        assert (a / "started").read_text() == (b / "started").read_text() == "2"
    else:  # in turn, the first waits in vain for the second
        assert codes["t/a"] == 3 and (a / "started").read_text() == "4"


DDP_JOB = textwrap.dedent("""
    import json, os, sys, pathlib, torch, torch.distributed as dist
    dist.init_process_group("gloo")  # env:// from the submitit task's environment
    t = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(t)
    if dist.get_rank() == 0:
        pathlib.Path(sys.argv[1], 'metrics.json').write_text(json.dumps(
            {'bbox': {'AP': t.item(), 'world_size': dist.get_world_size()}, 'meta': {'seed': 0}}))
    dist.destroy_process_group()
""")


def test_submitit_path_runs_each_job_as_a_ddp_run(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    specs = [LaunchSpec("t/good/seed0", good, [sys.executable, "-c", DDP_JOB, str(good)]),
             LaunchSpec("t/bad/seed0", bad, metrics_writer(fail=True))]
    params = ClusterParams(nodes=1, gpus_per_node=0, tasks_per_node=2, timeout_min=5, cpus_per_task=1)
    codes = launch_submitit(specs, params, tmp_path / ".submitit", cluster="local")
    assert codes == {"t/good/seed0": 0, "t/bad/seed0": 1}
    metrics = read_metrics(good)
    assert metrics["bbox"] == {"AP": 3.0, "world_size": 2}  # ranks 0 and 1 reduced: 1 + 2
    assert (good / "run_all.rank0.log").exists() and (good / "run_all.rank1.log").exists()


# ---- with the real engine ----------------------------------------------------------

def real_engine_or_skip() -> None:
    from mocobench.cli import SUBCOMMANDS

    if "transfer" not in SUBCOMMANDS:
        pytest.skip("mocobench transfer is not registered yet (engine branch not merged)")
    pytest.importorskip("mocobench.transfer.datasets.synth")


@pytest.mark.slow
def test_table_killed_halfway_reruns_only_unfinished_jobs(tmp_path):
    real_engine_or_skip()
    from engine_fixtures import write_tiny_config
    from mocobench.transfer.datasets.synth import write_synthetic

    data = tmp_path / "data"
    write_synthetic(data, 0, "tiny")
    write_tiny_config(tmp_path / "det.yaml")
    (tmp_path / "tiny.yaml").write_text("CONFIG: {RGB: det.yaml}\nTRIALS: 2\nMETRICS: [bbox/AP50]\n")
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {}\nscratch: {}\n")
    out = tmp_path / "out"
    args = ["--tables", tmp_path / "tiny.yaml", "--inits", inits, "--output", out, "--data-root", data]
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(["bash", str(RUN_ALL), *map(str, args)], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = out / "tiny" / "random" / "seed0"
    deadline = time.time() + 900
    while read_metrics(first) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # run_all and the job it is running
    proc.wait()
    assert read_metrics(first) is not None, proc.stdout.read()
    stamp = (first / "metrics.json").stat().st_mtime_ns

    res = run_all(*args, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    assert re.search(r"^done +tiny/random/seed0$", res.stdout, re.M)
    assert (first / "metrics.json").stat().st_mtime_ns == stamp  # not run again
    for init in ("random", "scratch"):
        for seed in (0, 1):
            assert read_metrics(out / "tiny" / init / f"seed{seed}", ["bbox/AP50"]) is not None


def test_run_alls_with_disjoint_jobs_share_an_output_and_an_overlapping_one_is_refused(tmp_path):
    """Each run-all locks its jobs' run folders, not the output: the demo runs one per init."""
    real_engine_or_skip()
    from conftest import one_line_refusals
    from engine_fixtures import write_tiny_config
    from mocobench.run_lock import RUN_ALL_LOCK_FILE
    from mocobench.transfer.datasets.synth import write_synthetic

    data, out = tmp_path / "data", tmp_path / "out"
    write_synthetic(data, 0, "tiny")
    write_tiny_config(tmp_path / "det.yaml")
    (tmp_path / "tiny.yaml").write_text("CONFIG: {RGB: det.yaml}\nTRIALS: 1\nMETRICS: [bbox/AP50]\n")

    def start(init: str) -> subprocess.Popen:
        (tmp_path / f"{init}.yaml").write_text(f"{init}: {{}}\n")
        argv = ["run-all", "--tables", tmp_path / "tiny.yaml", "--inits", tmp_path / f"{init}.yaml",
                "--output", out, "--data-root", data]
        return subprocess.Popen([sys.executable, "-m", "mocobench", *map(str, argv)], text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def wait_until_held(init: str, proc: subprocess.Popen) -> None:
        lock, deadline = out / "tiny" / init / "seed0" / RUN_ALL_LOCK_FILE, time.time() + 120
        while not lock.is_file() or b"pid" not in lock.read_bytes():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)

    first = start("random")
    wait_until_held("random", first)
    first.send_signal(signal.SIGSTOP)  # alive and holding its job, however fast its job runs
    try:
        second, overlapping = start("scratch"), start("random")
        wait_until_held("scratch", second)  # both hold their jobs at once
        _, err = overlapping.communicate(timeout=120)
    finally:
        first.send_signal(signal.SIGCONT)
    refused = subprocess.CompletedProcess(overlapping.args, overlapping.returncode, "", err)
    assert not one_line_refusals({"overlap": refused},
                                 {"overlap": f"{out / 'tiny' / 'random' / 'seed0'}: in use by pid {first.pid}"})
    for proc in (first, second):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "1 finished now" in stdout, stdout + stderr
    assert all(read_metrics(out / "tiny" / init / "seed0", ["bbox/AP50"]) for init in ("random", "scratch"))


def test_failed_jobs_are_named_and_set_the_exit_status(tmp_path):
    table = write_table(tmp_path, trials=2)
    (tmp_path / "inits.yaml").write_text("moco: {weights: missing.pkl, format: RGB}\n")
    out = tmp_path / "out"
    write_json(out / "tiny" / "moco" / "seed0" / "metrics.json", METRICS)
    res = run_all("--tables", table, "--inits", tmp_path / "inits.yaml", "--output", out)
    assert res.returncode == 1
    assert "1 already done, 0 finished now, 1 failed" in res.stdout
    assert "FAILED tiny/moco/seed1" in res.stdout and "FAILED tiny/moco/seed0" not in res.stdout
    job = json.loads((out / "tiny" / "moco" / "seed1" / "job.json").read_text())
    assert job["world_size"] == 1 and job["seed"] == 1 and job["init"] == "moco"
    assert job["scaling_overrides"][:4] == ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.0025"]
    assert (out / "tiny" / "moco" / "seed1" / "run_all.log").stat().st_size > 0


def test_trials_option_overrides_the_tables_trials(tmp_path):
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {}\nsupervised: {weights: s.pkl, format: RGB}\nmoco: {weights: m.pkl, format: RGB}\n")
    res = run_all("--dry-run", "--tables", "demo_voc_R50_C4", "--trials", "2", "--inits", inits,
                  "--output", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    listed = set(re.findall(r"^\S+ +(\S+/\S+/seed\d+)", res.stdout, re.M))
    # random init keeps the table's RANDOM_TRIALS (3) where --trials is fewer: its spread is measured
    assert listed == ({f"demo_voc_R50_C4/{i}/seed{k}" for i in ("supervised", "moco") for k in (0, 1)}
                      | {f"demo_voc_R50_C4/random/seed{k}" for k in (0, 1, 2)})
    bad = run_all("--dry-run", "--tables", "demo_voc_R50_C4", "--trials", "0", "--inits", inits)
    assert bad.returncode != 0 and "--trials" in bad.stderr and "not a whole number >= 1" in bad.stderr


def test_sacct_warning_of_a_slurm_without_accounting_is_silenced(tmp_path, monkeypatch, capsys):
    """submitit's real poll with a sacct that fails as one without accounting storage does:
    its warning never reaches submitit's handlers, other warnings do, and one line says why."""
    import logging
    import logging.handlers

    from submitit.slurm.slurm import SlurmInfoWatcher

    from mocobench.results.launch import quiet_sacct

    sacct = tmp_path / "sacct"
    sacct.write_text("#!/bin/sh\necho 'sacct: error: Slurm accounting storage is disabled' >&2\nexit 1\n")
    sacct.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    handler = logging.handlers.BufferingHandler(capacity=100)  # what reaches submitit's handlers
    logger = logging.getLogger("submitit")
    logger.addHandler(handler)
    try:
        watcher = SlurmInfoWatcher()
        watcher.register_job("42")
        with quiet_sacct() as quiet:
            watcher.update()
            watcher.update()
            logger.warning("another submitit warning")
        watcher.update()  # outside: submitit's own behaviour is back
    finally:
        logger.removeHandler(handler)
    assert quiet.dropped == 2
    seen = [record.getMessage() for record in handler.buffer]
    assert seen[0] == "another submitit warning" and len(seen) == 2 and "Bypassing sacct error" in seen[1]
    assert "run-all: sacct failed on 2 poll(s)" in capsys.readouterr().out


def test_run_all_sh_without_mocobench_says_which_python_in_one_line(tmp_path):
    """A python without the package (a bare venv), from the checkout root where the source
    folder mocobench/ imports: one line naming that python and how to install, exit 2."""
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    done = subprocess.run(["bash", str(RUN_ALL), "--dry-run"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": str(bare / "bin" / "python")}, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    version = "%d.%d" % sys.version_info[:2]
    assert done.stderr.startswith(f"run_all.sh: {bare / 'bin' / 'python'} (Python {version}) cannot import mocobench")
    assert ".venv/bin/pip install -e ." in done.stderr


def test_run_all_sh_prefers_the_checkouts_venv(tmp_path):
    """PYTHON unset: the checkout's .venv/bin/python is the one run (here a bare one, so it says so)."""
    (tmp_path / "benchmarks").mkdir()
    script = tmp_path / "benchmarks" / "run_all.sh"
    script.write_text(RUN_ALL.read_text())
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"run_all.sh: {tmp_path / '.venv' / 'bin' / 'python'} (Python ")
