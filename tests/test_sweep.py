"""Sweep files: expansion of the shipped ones, one-line errors, a tiny sweep run end to end
(pretrain -> kNN -> report, then skipped when re-run) and the paper-format momentum table."""

from __future__ import annotations

import pandas as pd
import pytest

from mocobench import UserError
from mocobench.cli import main
from mocobench.results.sweep import load_sweep, resolve_sweep, run_config
from mocobench.results.sweep_report import momentum_table
from pretrain_tiny import write_images, write_labelled, write_tiny_config


def test_shipped_sweeps_expand_each_distinct_run_once():
    r50 = load_sweep(resolve_sweep("ablations_r50"))
    names = [r.name for r in r50.runs]
    assert len(names) == len(set(names)) == 20
    assert "moco_K65536_m0.999_shuffle" in names and "moco_K65536_m0.999_noshuffle" in names
    e2e = next(r for r in r50.runs if r.name == "end_to_end_K1024_shuffle")
    cfg = run_config(r50, e2e)
    assert cfg.SOLVER.BATCH_SIZE == cfg.MOCO.K == 1024 and cfg.SOLVER.EPOCHS == 200 and cfg.MODEL.DEPTH == 50
    [(table, runs)] = r50.detection_runs().items()
    assert table.name == "mechanisms_voc_R50_C4_24k.yaml"
    assert [r.name for r in runs] == ["end_to_end_K1024_shuffle", "memory_bank_K65536", "moco_K65536_m0.999_shuffle"]
    assert len(load_sweep(resolve_sweep("ablations_demo")).runs) == 13
    short = load_sweep(resolve_sweep("ablations_demo_short"))
    assert {r.name for r in short.runs} == {"moco_K1024_m0_shuffle", "moco_K1024_m0.99_shuffle",
                                            "moco_K1024_m0.99_noshuffle", "memory_bank_K1024", "end_to_end_K64_shuffle"}
    assert run_config(short, short.runs[0]).SOLVER.EPOCHS == 3


def sweep_file(tmp_path, groups: str, eval_line: str = "EVAL: {KNN: tiny.yaml, METRIC: knn}") -> str:
    write_tiny_config(tmp_path / "tiny.yaml")
    path = tmp_path / "sweep.yaml"
    path.write_text(f"PRETRAIN: {{CONFIG: tiny.yaml, OVERRIDES: [SOLVER.EPOCHS, 1]}}\n{eval_line}\nGROUPS:\n{groups}")
    return str(path)


@pytest.mark.parametrize("groups, message", [
    ("  g: {MECHANISMS: [moco]}\n", "unknown config key 'GROUPS.g.MECHANISMS'"),
    ("  g: {MECHANISM: [moco], K: [12]}\n", "GROUPS.g: run moco_K12_m0.99_shuffle: MOCO.K 12 is not divisible"),
    ("  g: {MECHANISM: [end_to_end], K: [8], OVERRIDES: [SOLVER.BATCH_SIZE, 16]}\n",
     "MOCO.K 8 must equal SOLVER.BATCH_SIZE 16"),
    ("  g: {REPORT: table3}\n", "GROUPS.g: a DETECTION table goes with REPORT table3"),
    ("  g: {REPORT: figure4}\n", "GROUPS.g.REPORT must be one of"),
])
def test_bad_sweeps_fail_on_load_with_one_line_naming_the_file(tmp_path, groups, message):
    with pytest.raises(UserError) as err:
        load_sweep(sweep_file(tmp_path, groups))
    text = str(err.value)
    assert str(tmp_path / "sweep.yaml") in text and message in text and "\n" not in text, text


def test_dry_run_lists_every_job_with_its_state_and_runs_nothing(tmp_path, capsys):
    sweep = sweep_file(tmp_path, "  g: {REPORT: momentum, MECHANISM: [moco], K: [8], M: [0.0, 0.99]}\n")
    out = tmp_path / "out"
    assert main(["sweep", sweep, "--output", str(out), "--eval-data", "classify", "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "new     moco_K8_m0_shuffle/pretrain" in listed and "MOCO.M 0.0" in listed
    assert "waits   moco_K8_m0.99_shuffle/knn" in listed and not out.exists()


@pytest.mark.slow  # twelve subprocesses: about a minute on 2 busy cores
def test_tiny_sweep_runs_evaluates_reports_and_skips_when_rerun(tmp_path, capsys):
    write_images(tmp_path / "images", 16, seed=0)
    labelled = write_labelled(tmp_path / "classify")
    sweep = sweep_file(tmp_path, "  mechanisms: {REPORT: figure3, MECHANISM: [moco, memory_bank], K: [8]}\n"
                                 "  e2e: {REPORT: figure3, MECHANISM: [end_to_end], K: [8]}\n")
    out = tmp_path / "out"
    args = ["sweep", sweep, "--output", str(out), "--data", str(tmp_path / "images"), "--eval-data", str(labelled),
            "--parallel", "2"]
    assert main(args) == 0, capsys.readouterr()
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert sorted(runs["run"]) == ["end_to_end_K8_shuffle", "memory_bank_K8", "moco_K8_m0.99_shuffle"]
    assert runs["knn_top1"].between(0, 100).all() and runs["loss"].notna().all()
    assert (out / "report" / "figure3.png").stat().st_size > 1000
    assert "## Figure 3" in (out / "report" / "report.md").read_text()
    capsys.readouterr()
    assert main(args + ["--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert listed.count("done    ") == 6 and "new " not in listed


def test_momentum_table_puts_the_papers_row_under_the_measured_one():
    frame = pd.DataFrame({"m": [0.999, 0.0], "knn_top1": [40.0, 17.5], "loss": [5.0, 6.9],
                          "ln(1+K)": [6.93, 6.93]})
    lines = momentum_table(frame, "knn").splitlines()
    assert lines[0] == "| momentum m | 0 | 0.999 |"
    assert lines[2] == "| measured knn top-1 (%) | 17.50 | 40.00 |"
    assert lines[4] == "| paper linear top-1 (R50 IN-1M, K=4096) | fails to train | 59.0 |"
