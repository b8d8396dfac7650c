"""Results that would lie or get lost: a missing or non-numeric number, a duplicate seed, an
eval-only metrics.json, an unknown metric, a kNN k above the train images and a torn knn.json.
Each ends in a table cell "—" with its reason beside it, a skipped run named with why, or a
one-line refusal; never a traceback, a made-up number or a stuck sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hostile import assert_refused, run_here
from mocobench.atomic import write_json
from mocobench.results.runs import check_metrics
from pretrain_tiny import write_labelled, write_tiny_config
from test_sweep import sweep_file

TABLE = "CONFIG: {RGB: det.yaml}\nTRIALS: 2\nMETRICS: [bbox/AP50, bbox/AP]\n"
GOOD = {"AP50": 80.0, "AP": 50.0}

# metrics.json value as JSON text -> the reason its cell gives
BAD_VALUES = {
    "string": ('"abc"', "not a number"),
    "null": ("null", "not a number"),
    "nan": ("NaN", "not a number"),
    "bool": ("true", "not a number"),
    "infinity": ("Infinity", "not a number"),
    "absent": (None, "absent"),
}


def write_metrics(run_dir: Path, seed: int, bbox: dict, raw_ap50: str | None = "", **meta) -> Path:
    """A finished run's metrics.json; ``raw_ap50`` (JSON text, None: no key) replaces bbox/AP50."""
    record = {"bbox": dict(bbox), "meta": {"seed": seed, "max_iter": 10, "world_size": 1, **meta}}
    if raw_ap50 == "":
        write_json(run_dir / "metrics.json", record)
        return run_dir
    record["bbox"].pop("AP50", None)
    text = json.dumps(record)
    if raw_ap50 is not None:
        text = text.replace('"bbox": {', f'"bbox": {{"AP50": {raw_ap50}, ', 1)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(text)
    return run_dir


def table_fixture(tmp_path: Path, table: str = TABLE) -> tuple[Path, Path]:
    """A two-trial table and its run root with moco finished on seeds 0 and 1."""
    det = "INPUT: {FORMAT: RGB}\nSOLVER: {IMS_PER_BATCH: 16, MAX_ITER: 800, STEPS: [600]}\n"
    (tmp_path / "det.yaml").write_text(det)
    (tmp_path / "t.yaml").write_text(table)
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_metrics(root / "t" / "moco" / f"seed{seed}", seed, {"AP50": 81.0 + seed, "AP": 52.0})
    return tmp_path / "t.yaml", root


def collate(tmp_path: Path, table: Path, root: Path, capsys, *extra) -> tuple[str, str]:
    """(report.md, stdout) of a collate that must succeed."""
    out = tmp_path / "report"
    outcome = run_here(["collate", root, "--out", out, "--tables", table, *extra], capsys)
    assert outcome.code == 0 and "Traceback" not in outcome.stderr, outcome
    return (out / "report.md").read_text(), outcome.stdout


def row(md: str, name: str) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"| {name} |"))


# ---- missing and non-numeric values ---------------------------------------------------

@pytest.mark.parametrize("kind", BAD_VALUES)
def test_collate_shows_a_bad_baseline_value_as_a_dash_with_its_reason(tmp_path, capsys, kind):
    raw, reason = BAD_VALUES[kind]
    table, root = table_fixture(tmp_path)
    for seed in (0, 1):
        write_metrics(root / "t" / "supervised" / f"seed{seed}", seed, GOOD, raw)
    md, _ = collate(tmp_path, table, root, capsys)
    assert row(md, "supervised") == "| supervised | — | 50.0±0.0 |"
    assert row(md, "moco") == "| moco | 81.5±0.7 | 52.0±0.0 (+2.0) |"  # no delta without a baseline
    notes = md.split(row(md, "moco"), 1)[1]
    assert re.search(rf"supervised, bbox/AP50: .*seed0.*{reason}", notes), md
    assert re.search(r"moco, bbox/AP50: no delta .*supervised", notes), md


@pytest.mark.parametrize("kind", BAD_VALUES)
def test_audit_shows_a_bad_value_as_a_dash_with_its_reason(tmp_path, capsys, kind):
    raw, reason = BAD_VALUES[kind]
    for side, ap50 in (("cand", 82.0), ("base", 80.0)):
        for seed in (0, 1):
            write_metrics(tmp_path / side / f"seed{seed}", seed, {"AP50": ap50 + seed, "AP": 50.0 + seed},
                          raw if side == "base" else "")
    out = run_here(["audit", "--candidate", tmp_path / "cand", "--baseline", tmp_path / "base",
                    "--metrics", "bbox/AP50", "bbox/AP", "--json", tmp_path / "a.json"], capsys)
    assert out.code == 3 and "Traceback" not in out.stderr, out
    line = next(x for x in out.stdout.splitlines() if x.startswith("bbox/AP50 "))
    assert "—" in line and reason in out.stdout and "seed0" in out.stdout, out.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["metrics"][0]["verdict"] == "too few trials" and data["metrics"][1]["verdict"] == "within noise"


def test_audit_default_metrics_keep_one_with_bad_values_and_name_one_sided_ones(tmp_path, capsys):
    for side in ("cand", "base"):
        for seed in (0, 1):
            extra = {"segm": {"AP": 30.0}} if side == "cand" else {}
            write_metrics(tmp_path / side / f"seed{seed}", seed, {"AP50": 80.0 + seed, "AP": 50.0 + seed},
                          "null" if side == "base" else "")
            if extra:
                data = json.loads((tmp_path / side / f"seed{seed}" / "metrics.json").read_text())
                write_json(tmp_path / side / f"seed{seed}" / "metrics.json", {**data, **extra})
    out = run_here(["audit", "--candidate", tmp_path / "cand", "--baseline", tmp_path / "base"], capsys)
    assert out.code == 3, out
    assert re.search(r"^bbox/AP50 .*—", out.stdout, re.M) and "segm/AP" in out.stdout, out.stdout


def test_collate_with_a_table_of_no_runs_yet_shows_dashes_and_why(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    (root / "t" / "supervised" / "seed0").mkdir(parents=True)
    (root / "t" / "supervised" / "seed0" / "last_checkpoint").write_text("model_0000099.pth")  # still running
    (root / "t" / "mocov2").mkdir()
    md, stdout = collate(tmp_path, table, root, capsys)
    assert row(md, "supervised") == "| supervised | — | — |" and row(md, "mocov2") == "| mocov2 | — | — |"
    assert row(md, "moco") == "| moco | 81.5±0.7 | 52.0±0.0 |"
    assert re.search(r"supervised: no finished run", md) and re.search(r"mocov2: no finished run", md)
    assert "t/supervised/seed0: not finished (no metrics.json)" in md  # the left-out run, in the report
    assert "t/supervised/seed0: skipped" in stdout
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<li>mocov2: no finished run</li>" in html and "t/supervised/seed0: not finished" in html


def test_collate_names_trials_outside_the_tables_seeds(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / "seed7", 7, {"AP50": 1.0, "AP": 1.0})
    md, _ = collate(tmp_path, table, root, capsys)
    assert row(md, "moco") == "| moco | 81.5±0.7 | 52.0±0.0 |"
    assert re.search(r"t/moco/seed7: .*seed 7 .*0\.\.1", md), md


def test_collate_runs_with_a_torn_bbox_ap_are_listed_in_the_report(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    (root / "t" / "moco" / "seed1" / "metrics.json").write_text('{"bbox": {"AP": 1')
    md, _ = collate(tmp_path, table, root, capsys)
    assert "| moco | 81.0 [1/2] | 52.0 [1/2] |" in md
    assert "t/moco/seed1: metrics.json unreadable" in md


# ---- duplicate seeds and moved-aside folders ------------------------------------------

def test_collate_refuses_two_folders_holding_one_seed(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / "seed00", 0, {"AP50": 1.0, "AP": 1.0})
    out = assert_refused(["collate", root, "--out", tmp_path / "r", "--tables", table], "seed 0", capsys,
                         untouched=[root])
    assert "seed0" in out.stderr and "seed00" in out.stderr and not (tmp_path / "r").exists()


def test_collate_skips_a_folder_whose_seed_is_not_its_name(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / "seed1", 0, {"AP50": 1.0, "AP": 1.0})  # a copy of seed0's run
    md, _ = collate(tmp_path, table, root, capsys)
    assert "| moco | 81.0 [1/2] | 52.0 [1/2] |" in md and re.search(r"t/moco/seed1: .*seed 0", md)


@pytest.mark.parametrize("mark", [".stale-20260101-120000", ".replaced-20260101-120000"])
def test_collate_names_moved_aside_folders_as_left_out(tmp_path, capsys, mark):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / f"seed0{mark}", 0, {"AP50": 1.0, "AP": 1.0})
    md, _ = collate(tmp_path, table, root, capsys)
    assert row(md, "moco") == "| moco | 81.5±0.7 | 52.0±0.0 |"
    assert f"t/moco/seed0{mark}: moved aside" in md


def audit_sides(tmp_path: Path) -> tuple[Path, Path]:
    for side, base in (("cand", 82.0), ("base", 80.0)):
        for seed in (0, 1, 2):
            write_metrics(tmp_path / side / f"seed{seed}", seed, {"AP50": base + 0.1 * seed, "AP": 50.0})
    return tmp_path / "cand", tmp_path / "base"


@pytest.mark.parametrize("mark", [".stale-20260101-120000", ".replaced-20260101-120000"])
def test_audit_skips_moved_aside_folders_and_says_so(tmp_path, capsys, mark):
    cand, base = audit_sides(tmp_path)
    write_metrics(base / f"seed0{mark}", 0, {"AP50": 10.0, "AP": 50.0})
    out = run_here(["audit", "--candidate", cand, "--baseline", base, "--metrics", "bbox/AP50"], capsys)
    assert out.code == 0 and "paired t" in out.stdout and "better" in out.stdout, out
    assert f"seed0{mark}: skipped: moved aside" in out.stdout


def test_audit_refuses_two_runs_of_one_seed_naming_both(tmp_path, capsys):
    cand, base = audit_sides(tmp_path)
    write_metrics(base / "old" / "seed0", 0, {"AP50": 10.0, "AP": 50.0})
    out = assert_refused(["audit", "--candidate", cand, "--baseline", base], "seed 0", capsys, untouched=[base])
    assert str(base / "seed0") in out.stderr and str(base / "old" / "seed0") in out.stderr


# ---- eval-only metrics.json ------------------------------------------------------------

EVAL_ONLY = "eval-only numbers, not a trained run"


def test_check_metrics_refuses_an_eval_only_result(tmp_path):
    write_metrics(tmp_path / "seed0", 0, GOOD, eval_only=True)
    assert check_metrics(tmp_path / "seed0") == (None, f"metrics.json holds {EVAL_ONLY} (meta.eval_only)")
    write_metrics(tmp_path / "seed1", 1, GOOD, eval_only=False)
    assert check_metrics(tmp_path / "seed1")[0] is not None


def test_run_all_dry_run_does_not_count_an_eval_only_result_as_done(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / "seed0", 0, GOOD, eval_only=True)
    (tmp_path / "inits.yaml").write_text("moco: {format: RGB}\n")
    out = run_here(["run-all", "--dry-run", "--tables", table, "--inits", tmp_path / "inits.yaml",
                    "--output", root], capsys)
    assert out.code == 0, out
    # started afresh, the eval-only folder moved aside (a plain transfer would refuse to replace it)
    assert re.search(r"^stale +t/moco/seed0 +\(changed: metrics.json holds eval-only numbers", out.stdout, re.M)
    assert re.search(r"^done +t/moco/seed1$", out.stdout, re.M)


def test_collate_skips_an_eval_only_result_naming_why(tmp_path, capsys):
    table, root = table_fixture(tmp_path)
    write_metrics(root / "t" / "moco" / "seed1", 1, {"AP50": 99.0, "AP": 99.0}, eval_only=True)
    md, stdout = collate(tmp_path, table, root, capsys)
    assert "| moco | 81.0 [1/2] | 52.0 [1/2] |" in md
    assert f"t/moco/seed1: metrics.json holds {EVAL_ONLY}" in md and EVAL_ONLY in stdout


def test_audit_skips_an_eval_only_result_naming_why(tmp_path, capsys):
    cand, base = audit_sides(tmp_path)
    write_metrics(cand / "seed2", 2, {"AP50": 10.0, "AP": 10.0}, eval_only=True)
    out = run_here(["audit", "--candidate", cand, "--baseline", base, "--metrics", "bbox/AP50",
                    "--json", tmp_path / "a.json"], capsys)
    assert out.code == 0 and "Welch t" in out.stdout and "(n=2 vs 3" in out.stdout, out
    assert f"seed2: skipped: metrics.json holds {EVAL_ONLY}" in out.stdout
    skipped = json.loads((tmp_path / "a.json").read_text())["skipped"]
    assert skipped == [{"run_dir": str(cand / "seed2"), "why": f"metrics.json holds {EVAL_ONLY} (meta.eval_only)"}]


# ---- unknown metric names ---------------------------------------------------------------

@pytest.mark.parametrize("metric", ["bbox/APX", "keypoints/APs", "bbox/ap", "segm/AP90"])  # keypoints: no small range
def test_collate_refuses_a_table_naming_an_unknown_metric(tmp_path, capsys, metric):
    table, root = table_fixture(tmp_path, TABLE.replace("bbox/AP]", f"{metric}]"))
    assert_refused(["collate", root, "--out", tmp_path / "r", "--tables", table],
                   f"metric {metric!r} is not a known metric", capsys, untouched=[root])


def test_run_all_dry_run_refuses_a_table_naming_an_unknown_metric(tmp_path, capsys):
    table, root = table_fixture(tmp_path, TABLE.replace("bbox/AP]", "bbox/mAP]"))
    (tmp_path / "inits.yaml").write_text("moco: {format: RGB}\n")
    assert_refused(["run-all", "--dry-run", "--tables", table, "--inits", tmp_path / "inits.yaml",
                    "--output", root], f"{table}: metric 'bbox/mAP' is not a known metric", capsys,
                   untouched=[root])


def test_audit_refuses_an_unknown_metric(tmp_path, capsys):
    cand, base = audit_sides(tmp_path)
    assert_refused(["audit", "--candidate", cand, "--baseline", base, "--metrics", "bbox/APX"],
                   "--metrics bbox/APX: not a known metric", capsys, untouched=[tmp_path])


# ---- kNN k ------------------------------------------------------------------------------

@pytest.mark.parametrize("ks, expected", [
    ("(200,)", "KNN.K 200 > 16 train images in"),
    ("(3, 17)", "KNN.K 17 > 16 train images in"),
    ("(0,)", "KNN.K"),
    ("(-5, 3)", "KNN.K"),
    ("()", "KNN.K"),
])
def test_knn_refuses_a_k_it_cannot_honour_before_any_feature(tmp_path, capsys, monkeypatch, ks, expected):
    import mocobench.pretrain.knn as knn

    def no_features(*args, **kw):
        raise AssertionError("features computed before the k check")

    monkeypatch.setattr(knn, "extract", no_features)
    monkeypatch.setattr(knn, "estimate_bn_stats", no_features)
    labelled = write_labelled(tmp_path / "labelled")  # 2 classes x 8 = 16 train images
    config = write_tiny_config(tmp_path / "pre.yaml")
    out = assert_refused(["knn", "--random-init", "--data", labelled, "--config", config,
                          "--output", tmp_path / "knn.json", "KNN.K", ks], expected, capsys,
                         untouched=[tmp_path / "knn.json"])
    assert "16 train images" in out.stderr or ">= 1" in out.stderr or "< 1" in out.stderr, out.stderr


@pytest.mark.parametrize("ks, expected", [
    ([0], "KNN.K 0 < 1: each k must be in 1..16"), ([3, -5], "KNN.K -5 < 1"), ([], "KNN.K is empty"),
    ([2.5], "KNN.K 2.5 is not a whole number"), ([16, 17], "KNN.K 17 > 16 train images in data/train"),
])
def test_knn_k_check_names_the_k_and_what_is_allowed(ks, expected):
    from mocobench import UserError
    from mocobench.pretrain.knn import check_ks

    with pytest.raises(UserError, match=re.escape(expected)):
        check_ks(ks, 16, Path("data/train"))
    check_ks([1, 16], 16, Path("data/train"))


# ---- torn knn.json in a sweep ---------------------------------------------------------

TORN = {
    "truncated": '{"top1@3": 5',
    "empty": "",
    "not a mapping": "[1, 2]",
    "no top1@3": '{"top1@20": 50.0}',
    "top1@3 not a number": '{"top1@3": "high"}',
}


def knn_sweep(tmp_path: Path) -> tuple[str, Path, Path]:
    """A one-run kNN sweep whose pretraining finished; (sweep file, output, the run's knn.json)."""
    sweep = sweep_file(tmp_path, "  g: {REPORT: momentum, MECHANISM: [moco], K: [8], M: [0.99]}\n")
    out = tmp_path / "out"
    run = out / "moco_K8_m0.99_shuffle"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "checkpoint_0001.pth.tar").write_bytes(b"weights")
    return sweep, out, run / "knn.json"


@pytest.mark.parametrize("kind", TORN)
def test_sweep_recomputes_a_torn_knn_json_saying_so(tmp_path, capsys, kind):
    sweep, out, knn_json = knn_sweep(tmp_path)
    knn_json.write_text(TORN[kind])
    res = run_here(["sweep", sweep, "--output", out, "--eval-data", "classify", "--dry-run"], capsys)
    assert res.code == 0 and "Traceback" not in res.stderr, res
    line = next(x for x in res.stdout.splitlines() if "moco_K8_m0.99_shuffle/knn" in x)
    assert line.startswith("new ") and "knn.json" in line and "recomputed" in line, line


def test_sweep_counts_a_whole_knn_json_as_done(tmp_path, capsys):
    sweep, out, knn_json = knn_sweep(tmp_path)
    write_json(knn_json, {"top1@3": 55.0})
    res = run_here(["sweep", sweep, "--output", out, "--eval-data", "classify", "--dry-run"], capsys)
    assert re.search(r"^done +moco_K8_m0.99_shuffle/knn$", res.stdout, re.M), res.stdout


@pytest.mark.parametrize("kind", ["truncated", "top1@3 not a number"])
def test_sweep_report_shows_a_torn_knn_json_as_a_dash(tmp_path, capsys, kind):
    sweep, out, knn_json = knn_sweep(tmp_path)
    knn_json.write_text(TORN[kind])
    res = run_here(["sweep", sweep, "--output", out, "--collate-only"], capsys)
    assert res.code == 0 and "Traceback" not in res.stderr, res
    report = (out / "report" / "report.md").read_text()
    assert re.search(r"\| measured knn top-1 \(%\) \| — \|", report), report
    assert "knn.json" in res.stdout
