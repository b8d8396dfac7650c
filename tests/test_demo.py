"""`mocobench demo` end to end at tiny scale, killed halfway and resumed.

The real commands as subprocesses (synthetic data, then a graph on two workers: MoCo
pretraining, supervised init, their conversions, a detection run-all per init of a tiny
table, collation); only the sizes are tiny. The second run must skip every finished task and
detection job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mocobench import UserError
from engine_fixtures import write_tiny_config as write_tiny_detection_config
from pretrain_tiny import write_tiny_config as write_tiny_pretrain_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_demo_config(tmp: Path) -> Path:
    detection = write_tiny_detection_config(tmp / "detect.yaml")
    (tmp / "table.yaml").write_text(yaml.safe_dump({
        "TITLE": "tiny demo table", "SCALE": "demo", "CONFIG": {"RGB": str(detection)},
        "METRICS": ["bbox/AP50", "bbox/AP"]}))
    pretrain = write_tiny_pretrain_config(tmp / "pretrain.yaml")
    supervised = tmp / "supervised.yaml"
    supervised.write_text(yaml.safe_dump({
        "_BASE_": str(ROOT / "configs" / "pretrain" / "supervised_demo.yaml"),
        "MODEL": {"STEM_OUT_CHANNELS": 8, "RES2_OUT_CHANNELS": 16, "WIDTH_PER_GROUP": 4},
        "INPUT": {"CROP_SIZE": 32, "RESIZE_SIZE": 36}, "DATA": {"NUM_WORKERS": 0},
        "SOLVER": {"EPOCHS": 2, "BATCH_SIZE": 4}}))
    config = tmp / "demo.yaml"
    config.write_text(yaml.safe_dump({
        "DATA_SCALE": "tiny", "PRETRAIN_CONFIG": str(pretrain), "SUPERVISED_CONFIG": str(supervised),
        "TABLES": [str(tmp / "table.yaml")], "NUM_THREADS": 2, "PARALLEL": 2}))
    return config


def demo(config: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ}
    return subprocess.Popen([sys.executable, "-m", "mocobench", "demo", "--output-dir", str(out), "--config",
                             str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)


def test_demo_killed_during_detection_resumes_without_redoing_finished_work(tmp_path):
    config, out = tiny_demo_config(tmp_path), tmp_path / "out"
    first = demo(config, out)
    runs = out / "runs"
    deadline = time.time() + 300
    while not list(runs.glob("*/moco/*/metrics.json")):  # kill once a pretrained-init job has finished
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no detection job finished within 5 minutes"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first_text = first.stdout.read()
    # the backbones train side by side, on a worker each
    assert first_text.index("[demo] supervised: ") < first_text.index("[demo] pretrain finished"), first_text
    finished = {p.parent for p in runs.glob("**/metrics.json")}
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("pretrain/checkpoint_*.pth.tar")}
    supervised = {"supervised": out / "supervised" / "model_final.pth",
                  "convert-supervised": out / "weights" / "supervised.pkl"}
    # a moco job needs the pretraining and its conversion; the supervised branch may be done too
    on_disk = {"pretrain", "convert-moco"} | {task for task, path in supervised.items() if path.is_file()}

    second = demo(config, out)
    text, _ = second.communicate(timeout=600)
    assert second.returncode == 0, text
    assert "already holds the complete data" in text  # the data stage only checks the folder
    skipped = {line.split(": ")[0].removeprefix("[demo] ") for line in text.splitlines()
               if line.startswith("[demo] ") and line.endswith(" -- already done, skipped")}
    assert skipped == on_disk, text  # every backbone and conversion finished before the kill
    for run_dir in finished:  # finished detection jobs are listed as done, not run again
        name = "/".join(run_dir.relative_to(runs).parts)
        assert any(line.startswith("done") and name in line for line in text.splitlines()), (name, text)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(list(runs.glob("**/metrics.json"))) == 3  # random, supervised, moco
    report = (out / "report" / "report.md").read_text()
    assert "tiny demo table" in report and "moco" in report and "random" in report
    assert "tiny demo table" in text  # the tables are printed
    assert "GFLOP/s" in text.splitlines()[0]  # the header names the machine's matmul rate
    machine = json.loads((out / "demo.json").read_text())["machine"]
    assert machine["sgemm_gflops"] > 0 and machine["threads"] == 2
    assert machine["conv_gflops"] > 0 and "convolutions" in text.splitlines()[0]


def test_a_folder_made_with_other_settings_is_refused(tmp_path, capsys):
    """The stages skip what is on disk, so resuming after a settings or config edit would
    reuse stale backbones: the demo refuses, naming the stamp file and what changed."""
    from mocobench.cli import main
    from mocobench.config import load_config, load_defaults
    from mocobench.results.demo import DEFAULTS_FILE, STAMP_FILE, claim_output_dir, fingerprint

    config = tiny_demo_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = load_config(load_defaults(DEFAULTS_FILE), config, [])
    claim_output_dir(out, fingerprint(cfg), {"sgemm_gflops": 60.0})
    claim_output_dir(out, fingerprint(cfg), {"sgemm_gflops": 200.0})  # same settings, other machine: fine
    assert main(["demo", "--output-dir", str(out), "--config", str(config), "SEED", "1"]) == 2
    err = capsys.readouterr().err
    assert STAMP_FILE in err and "(SEED)" in err
    pretrain = Path(cfg.PRETRAIN_CONFIG)
    pretrain.write_text(pretrain.read_text() + "SOLVER: {BASE_LR: 0.5}\n")  # an edit inside the config
    assert main(["demo", "--output-dir", str(out), "--config", str(config)]) == 2
    assert "PRETRAIN_CONFIG (resolved)" in capsys.readouterr().err
    assert not (out / "data").exists()  # refused before any stage ran
    detection = tmp_path / "detect.yaml"  # an edit inside a table's detection config counts too
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    claim_output_dir(fresh, fingerprint(cfg))
    detection.write_text(detection.read_text().replace("MAX_ITER: 4", "MAX_ITER: 5"))
    with pytest.raises(UserError, match=r"table: detect.yaml \(resolved\)"):
        claim_output_dir(fresh, fingerprint(cfg))


def test_eta_spreads_work_over_workers_and_scales_by_measured_speed_but_not_by_resumed_tasks():
    from mocobench.results.demo import Eta
    from mocobench.results.schedule import Task

    tasks = [Task("data", [], (), 10.0), Task("a", [], ("data",), 100.0), Task("b", [], ("data",), 50.0),
             Task("c", [], ("data",), 50.0)]
    eta = Eta(tasks, workers=2)
    assert eta.remaining(["data", "a", "b", "c"]) == 110.0  # the chain data -> a beats 210 / 2 workers
    eta.record("data", 0.2)  # found on disk: no measure of speed
    assert eta.remaining(["a", "b", "c"]) == 100.0
    assert eta.remaining(["a", "b", "c"], running={"a": 60.0}) == 70.0  # (40 + 50 + 50) / 2 workers
    eta.record("a", 200.0)  # this machine runs at half the expected speed
    assert eta.remaining(["b", "c"]) == 100.0  # max(100 / 2, 50) x 2
    assert eta.remaining(["b", "c"], running={"b": 60.0, "c": 60.0}) == 40.0  # 20 expected seconds left each


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 7])  # the seeds whose COCO table flipped before (on an EPYC and on a Xeon)
def test_demo_at_another_seed_puts_both_pretrained_inits_above_random_init(tmp_path, seed):
    """The whole demo at its defaults but SEED: in both tables supervised and MoCo lead random init
    on box AP50, and each lead is told against random init's measured spread (~5 minutes)."""
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "mocobench", "demo", "--output-dir", str(out), "SEED", str(seed)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line.split(",") for line in (out / "report" / "results.csv").read_text().splitlines()[1:]]
    ap50 = {(r[0], r[1]): float(r[7]) for r in rows if r[2] == "measured" and r[4] == "bbox/AP50"}
    for table in ("demo_voc_R50_C4", "demo_coco_R50_C4"):
        for init in ("supervised", "moco"):
            assert ap50[(table, init)] > ap50[(table, "random")], (table, ap50)
    assert done.stdout.count("sd of random init") == 4, done.stdout[-3000:]
