"""Run digests: a resume with other inputs is refused naming them, run-all reruns a finished
job whose config changed (the old run moved aside), collate refuses a run not of its table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from engine_fixtures import D2, DEMO, TINY, write_tiny_config
from mocobench.transfer.datasets.synth import write_synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    write_synthetic(out, seed=0, scale="tiny")
    return out


def transfer(cli, out: Path, data: Path, *extra: str, seed: str = "1", opts=()):
    return cli("transfer", "--config", DEMO / "demo_voc_C4.yaml", "--output-dir", out, "--data-root", data,
               "--seed", seed, *extra, *TINY, *opts)


@pytest.mark.parametrize("engine", ["torchvision", pytest.param("detectron2", marks=D2)])
def test_resume_with_other_inputs_is_refused_naming_them(cli, tmp_path, data, engine):
    run = tmp_path / "run"
    on = ("--engine", engine)
    assert transfer(cli, run, data, *on).returncode == 0
    before = (run / "metrics.json").read_bytes()
    lr = transfer(cli, run, data, *on, "--resume", opts=("SOLVER.BASE_LR", "0.5"))
    assert lr.returncode == 2 and "SOLVER.BASE_LR" in lr.stderr and "Traceback" not in lr.stderr
    seed = transfer(cli, run, data, *on, "--resume", seed="2")
    assert seed.returncode == 2 and "seed: 1 -> 2" in seed.stderr
    assert (run / "metrics.json").read_bytes() == before
    same = transfer(cli, run, data, *on, "--resume", opts=("DATALOADER.NUM_WORKERS", "1"))
    assert same.returncode == 0, same.stderr  # loader processes do not change the numbers


def write_table(tmp_path: Path) -> tuple[Path, Path, Path]:
    config = write_tiny_config(tmp_path / "det.yaml")
    table = tmp_path / "tiny.yaml"
    table.write_text("CONFIG: {RGB: det.yaml}\nTRIALS: 1\nMETRICS: [bbox/AP50]\n")
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {}\n")
    return config, table, inits


def test_run_all_reruns_a_job_whose_config_changed_and_collate_refuses_it(cli, tmp_path, data):
    config, table, inits = write_table(tmp_path)
    out = tmp_path / "out"
    args = ["--tables", table, "--inits", inits, "--output", out, "--data-root", data]
    assert cli("run-all", *args).returncode == 0
    run = out / "tiny" / "random" / "seed0"
    first = json.loads((run / "metrics.json").read_text())
    config.write_text(config.read_text() + "SOLVER: {BASE_LR: 0.002}\n")

    report = cli("collate", out, "--out", tmp_path / "report", "--tables", table)
    assert report.returncode == 0
    assert re.search(r"tiny/random/seed0: skipped: .*config", report.stdout), report.stdout
    assert "—" in (tmp_path / "report" / "tiny.csv").read_text()

    dry = cli("run-all", *args, "--dry-run")
    assert re.search(r"^stale +tiny/random/seed0  \(changed: config\)", dry.stdout, re.M), dry.stdout
    again = cli("run-all", *args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "moved to" in again.stdout and len(list(run.parent.glob("seed0.stale-*"))) == 1
    second = json.loads((run / "metrics.json").read_text())
    assert second["meta"]["base_lr"] == 0.002 != first["meta"]["base_lr"]
    assert re.search(r"^done +tiny/random/seed0$", cli("run-all", *args, "--dry-run").stdout, re.M)
