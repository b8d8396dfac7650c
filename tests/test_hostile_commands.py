"""Hostile inputs to the orchestration commands (data, demo, run-all, sweep, audit, evaluate,
collate): each refusal is one line naming the file, key or flag, with a non-zero exit, and
leaves the disk as it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile import assert_refused

SWEEP = "configs/sweeps/ablations_demo_short.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cases(tmp: Path) -> dict[str, tuple[list, str]]:
    """label -> (argv, text its refusal must hold); files they need are written under ``tmp``."""
    a_file = write(tmp / "a_file", "not a folder\n")
    busy = write(tmp / "busy" / "something.txt", "a user's file\n").parent
    inits = write(tmp / "inits.yaml", "moco: {weights: missing.pkl}\n")
    bad_inits = write(tmp / "bad_inits.yaml", "moco: [1, 2]\n")
    good_inits = write(tmp / "good_inits.yaml", "random: {}\n")
    bad_table = write(tmp / "t.yaml", "CONFIG: {BGR: nowhere.yaml}\nTRIALS: 0\nMETRICS: [bbox/AP50]\n")
    bad_sweep = write(tmp / "sweep.yaml", "TITLE: x\nRUNS: 3\n")
    demo_cfg = write(tmp / "demo.yaml", "TRIALS: 0\n")
    dets = write(tmp / "dets.json", "[]\n")
    return {
        "data synth --out a file": (["data", "synth", "--out", a_file, "--scale", "tiny"], "a_file"),
        "data synth --out a user's folder": (["data", "synth", "--out", busy, "--scale", "tiny"], str(busy)),
        "data synth --seed -1": (["data", "synth", "--out", tmp / "s", "--seed", "-1", "--scale", "tiny"], "--seed"),
        "data synth --workers 0": (["data", "synth", "--out", tmp / "s", "--workers", "0", "--scale", "tiny"],
                                   "--workers"),
        "demo: unknown key": (["demo", "--output-dir", tmp / "demo", "SEEDS", "1"], "SEEDS"),
        "demo: TRIALS 0 in a file": (["demo", "--output-dir", tmp / "demo", "--config", demo_cfg], "demo.yaml: TRIALS 0"),
        "demo: PARALLEL 0": (["demo", "--output-dir", tmp / "demo", "PARALLEL", "0"], "PARALLEL 0"),
        "demo: SEED -3": (["demo", "--output-dir", tmp / "demo", "SEED", "-3"], "SEED -3"),
        "demo: NUM_THREADS 0": (["demo", "--output-dir", tmp / "demo", "NUM_THREADS", "0"], "NUM_THREADS 0"),
        "demo: DATA_SCALE huge": (["demo", "--output-dir", tmp / "demo", "DATA_SCALE", "huge"], "DATA_SCALE"),
        "demo: --output-dir a file": (["demo", "--output-dir", a_file], "a_file"),
        "run-all: inits file missing": (["run-all", "--inits", tmp / "none.yaml", "--output", tmp / "o", "--dry-run"],
                                        "none.yaml"),
        "run-all: init not a mapping": (["run-all", "--inits", bad_inits, "--output", tmp / "o", "--dry-run"],
                                        "bad_inits.yaml"),
        "run-all: init weights missing": (["run-all", "--inits", inits, "--tables", "voc_R50_C4_24k", "--output",
                                           tmp / "o", "--dry-run"], "missing.pkl"),
        "run-all: unknown table": (["run-all", "--inits", good_inits, "--tables", "voc_R51", "--output", tmp / "o",
                                    "--dry-run"], "voc_R51"),
        "run-all: table with TRIALS 0": (["run-all", "--inits", good_inits, "--tables", bad_table, "--output",
                                          tmp / "o", "--dry-run"], "TRIALS"),
        "run-all: --trials 0": (["run-all", "--inits", good_inits, "--tables", "voc_R50_C4_24k", "--trials", "0",
                                 "--output", tmp / "o", "--dry-run"], "--trials"),
        "collate: --trials -1": (["collate", tmp, "--out", tmp / "report", "--trials", "-1"], "--trials"),
        "run-all: unknown flag": (["run-all", "--inits", good_inits, "--gpuz", "2"], "unrecognized arguments: --gpuz"),
        "transfer: --seed not a number": (["transfer", "--config", "x.yaml", "--seed", "one"], "--seed"),
        "convert: no output named": (["convert", a_file], "the following arguments are required"),
        "run-all: --output a file": (["run-all", "--inits", good_inits, "--tables", "voc_R50_C4_24k", "--output",
                                      a_file], "a_file"),
        "sweep: file missing": (["sweep", tmp / "nowhere.yaml", "--output", tmp / "sw", "--dry-run"], "nowhere.yaml"),
        "sweep: bad sweep file": (["sweep", bad_sweep, "--output", tmp / "sw", "--dry-run"], "sweep.yaml"),
        "audit: candidate folder without runs": (["audit", "--candidate", busy, "--baseline", busy], "no finished runs"),
        "audit: --alpha 2": (["audit", "--candidate", busy, "--baseline", busy, "--alpha", "2"], "--alpha"),
        "audit: --alpha nan": (["audit", "--candidate", busy, "--baseline", busy, "--alpha", "nan"], "--alpha"),
        "evaluate: unknown dataset": (["evaluate", "--dataset", "voc_2099_test", "--data-root", tmp,
                                       "--detections", dets], "voc_2099_test"),
        "evaluate: detections missing": (["evaluate", "--dataset", "voc_2007_test", "--data-root", tmp,
                                          "--detections", tmp / "none.json"], "none.json"),
        "evaluate: detections not JSON": (["evaluate", "--dataset", "voc_2007_test", "--data-root", tmp,
                                           "--detections", a_file], "a_file"),
        "collate: run root missing": (["collate", tmp / "nowhere", "--out", tmp / "report"], "nowhere"),
        "collate: inits not a mapping": (["collate", tmp, "--out", tmp / "report", "--inits", bad_inits,
                                          "--tables", "voc_R50_C4_24k"], "bad_inits.yaml"),
    }


LABELS = list(cases(Path("/nonexistent")))


@pytest.mark.parametrize("label", LABELS)
def test_orchestration_refusals_are_one_line(tmp_path, capsys, label):
    argv, expected = cases(tmp_path)[label]
    assert_refused(argv, expected, capsys, untouched=[tmp_path])
