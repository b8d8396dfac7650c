"""collate: fixture run folders -> exactly the expected paper-format table, HTML and PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mocobench.atomic import write_json
from mocobench.results.format import cell
from mocobench.results.tables import resolve_tables, table_files

TABLE = """
TITLE: "Test VOC table"
CONFIG: {RGB: det_rgb.yaml}
TRIALS: 3
METRICS: [bbox/AP50, bbox/AP, bbox/AP75]
PAPER:
  FILE: voc.csv
  FILTER: ["backbone=R50-C4", "schedule=24k"]
  COLUMNS: [AP50, AP, AP75]
"""

# init -> seed -> (AP50, AP, AP75)
RUNS = {
    "supervised": {0: (80.0, 50.0, 55.0), 1: (80.2, 50.5, 55.0), 2: (80.4, 51.0, 55.0)},
    "moco": {0: (81.0, 52.0, 54.0), 1: (81.2, 52.1, 54.4), 2: (81.4, 52.2, 54.8)},
    "random": {0: (60.0, 30.0, 28.0)},
}

EXPECTED_ROWS = """\
| init | AP50 | AP | AP75 |
|---|---|---|---|
| random | 60.0 [1/3] (-20.2) | 30.0 [1/3] (-20.5) | 28.0 [1/3] (-27.0) |
| supervised | 80.2±0.2 | 50.5±0.5 | 55.0±0.0 |
| moco | 81.2±0.2 (+1.0) | 52.1±0.1 (+1.6) | 54.4±0.4 (-0.6) |
| mocov2 | — | — | — |
| paper: random init. | 52.5 (-28.3) | 28.1 (-23.9) | 26.2 (-30.3) |
| paper: supervised IN-1M | 80.8 | 52.0 | 56.5 |
| paper: MoCo IN-1M | 81.4 (+0.6) | 55.2 (+3.2) | 61.2 (+4.7) |
| paper: MoCo IG-1B | 82.1 (+1.3) | 56.2 (+4.2) | 62.3 (+5.8) |
| repo: supervised IN-1M | 81.3 | 53.5 | 58.8 |
| repo: MoCo v1 200ep IN-1M | 81.5 (+0.2) | 55.9 (+2.4) | 62.6 (+3.8) |
| repo: MoCo v2 200ep IN-1M | 82.4 (+1.1) | 57.0 (+3.5) | 63.6 (+4.8) |
| repo: MoCo v2 800ep IN-1M | 82.5 (+1.2) | 57.4 (+3.9) | 64.0 (+5.2) |
"""


def write_run(run_dir: Path, seed: int, ap50: float, ap: float, ap75: float) -> None:
    write_json(run_dir / "metrics.json", {
        "bbox": {"AP50": ap50, "AP": ap, "AP75": ap75, "APs": 1.0},
        "meta": {"config": "det_rgb.yaml", "weights": "w.pkl", "seed": seed, "engine": "torchvision",
                 "dataset": "voc_2007_test", "max_iter": 10, "ims_per_batch": 2, "base_lr": 0.01,
                 "world_size": 1, "time_s": 1.0}})


def make_fixture(tmp_path: Path) -> tuple[Path, Path, Path]:
    table = tmp_path / "test_voc.yaml"
    table.write_text(TABLE)
    root = tmp_path / "runs"
    for init, seeds in RUNS.items():
        for seed, values in seeds.items():
            write_run(root / "test_voc" / init / f"seed{seed}", seed, *values)
    (root / "test_voc" / "random" / "seed1").mkdir()  # interrupted: no metrics.json
    (root / "test_voc" / "random" / "seed1" / "metrics.json").write_text('{"bbox": {"AP": 1')  # torn write
    inits = tmp_path / "inits.yaml"
    inits.write_text("random: {}\nsupervised: {format: BGR}\nmoco: {format: RGB}\nmocov2: {format: RGB}\n")
    return table, root, inits


def test_collate_writes_the_expected_table(tmp_path, cli):
    table, root, inits = make_fixture(tmp_path)
    out = tmp_path / "report"
    res = cli("collate", root, "--out", out, "--tables", table, "--inits", inits)
    assert res.returncode == 0, res.stderr
    md = (out / "report.md").read_text()
    assert md.startswith("### Test VOC table\n")
    assert md.endswith(EXPECTED_ROWS + "\nWhy a cell is — or has no delta:\n\n- mocov2: no finished run\n\nRuns left out:"
                       "\n\n- test_voc/random/seed1: metrics.json unreadable (JSONDecodeError)\n"
                       "\nLead over random init (bbox/AP50; beyond its spread: more than 2 of its sd):\n\n"
                       "- supervised: +20.2; random init's spread not measured (1 trial; RANDOM_TRIALS or TRIALS 2 or more measures it)\n"
                       "- moco: +21.2; random init's spread not measured (1 trial; RANDOM_TRIALS or TRIALS 2 or more measures it)\n")

    wide = pd.read_csv(out / "test_voc.csv", keep_default_na=False)
    assert list(wide.columns) == ["row", "source", "AP50", "AP", "AP75"]
    assert wide.loc[wide["row"] == "mocov2", "AP"].item() == "—"

    numbers = pd.read_csv(out / "results.csv")
    missing = numbers[(numbers["row"] == "mocov2")]
    assert (missing["n"] == 0).all() and missing["mean"].isna().all()  # missing, never zero
    moco_ap = numbers[(numbers["row"] == "moco") & (numbers["metric"] == "bbox/AP")].iloc[0]
    assert moco_ap["n"] == 3 and abs(moco_ap["delta"] - 1.6) < 1e-9

    png = (out / "test_voc.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<style>" in html and "81.2±0.2 (+1.0)" in html
    assert "<link" not in html and "src=\"http" not in html  # self-contained


def test_collate_without_inits_uses_the_folders_found(tmp_path, cli):
    table, root, _ = make_fixture(tmp_path)
    res = cli("collate", root, "--out", tmp_path / "r", "--tables", table)
    assert res.returncode == 0, res.stderr
    rows = pd.read_csv(tmp_path / "r" / "test_voc.csv")["row"].tolist()
    assert rows[:3] == ["moco", "random", "supervised"]


def test_cell_forms():
    assert cell(0, 5, float("nan"), float("nan"), float("nan")) == "—"
    assert cell(5, 5, 81.44, 0.21, 0.6) == "81.4±0.2 (+0.6)"
    assert cell(1, 1, 38.5, float("nan"), -0.4) == "38.5 (-0.4)"


def test_paper_tables_load_and_name_their_paper_rows():
    from mocobench.results.paper import paper_rows

    tables = resolve_tables([p.stem for p in table_files()])
    assert {t.name for t in tables} >= {"voc_R50_DC5_24k", "voc_R50_C4_24k", "voc07_R50_C4_9k",
                                        "coco_R50_FPN_1x", "coco_R50_FPN_2x", "coco_R50_C4_1x",
                                        "coco_R50_C4_2x"}
    for t in tables:
        rows = paper_rows(t)
        if t.cfg.SCALE == "paper":
            assert len(rows) >= 2 and rows["baseline"].sum() >= 1, t.name
            assert not rows[t.metrics].isna().any().any(), t.name
    voc07 = paper_rows(next(t for t in tables if t.name == "voc07_R50_C4_9k"))
    sup = voc07[voc07["label"] == "supervised IN-1M"].iloc[0]
    assert (sup["bbox/AP50"], sup["bbox/AP"], sup["bbox/AP75"]) == (74.4, 42.4, 42.7)


def test_unknown_table_key_names_key_and_file(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TABLE + "TRIAL: 5\n")
    res = cli("collate", tmp_path, "--out", tmp_path / "r", "--tables", bad)
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "'TRIAL'" in res.stderr and "TRIALS" in res.stderr


def test_metrics_json_fixture_matches_contract(tmp_path):
    write_run(tmp_path / "seed0", 0, 1.0, 2.0, 3.0)
    data = json.loads((tmp_path / "seed0" / "metrics.json").read_text())
    from mocobench.results.runs import read_metrics

    assert read_metrics(tmp_path / "seed0", ["bbox/AP50"]) == data
    assert read_metrics(tmp_path / "seed0", ["segm/AP"]) is None


def test_trials_option_collates_only_those_seeds(tmp_path, cli):
    table, root, inits = make_fixture(tmp_path)
    res = cli("collate", root, "--out", tmp_path / "r", "--tables", table, "--inits", inits, "--trials", "1")
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "r" / "report.md").read_text()
    assert "| random | 60.0 (-20.0) |" in md and "| supervised | 80.0 | 50.0 | 55.0 |" in md
    assert "mean over 1 trial(s)" in md


def test_each_row_lead_over_random_init_is_told_against_its_measured_spread(tmp_path, capsys):
    """random 60.0±1.0 over 3 trials: supervised +20 (20 sd) is beyond the spread, a row 1 point
    above is within it; with one random trial the spread is said to be unmeasured."""
    from mocobench.results.collate import lead_notes

    table = tmp_path / "test_voc.yaml"
    table.write_text(TABLE)
    out = tmp_path / "runs"
    runs = {"random": {0: (59.0, 30.0, 28.0), 1: (60.0, 30.0, 28.0), 2: (61.0, 30.0, 28.0)},
            "supervised": {k: (80.0, 50.0, 55.0) for k in range(3)}, "close": {k: (61.0, 31.0, 29.0) for k in range(3)}}
    from mocobench.results.collate import table_result

    for init, seeds in runs.items():
        for seed, values in seeds.items():
            write_run(out / "test_voc" / init / f"seed{seed}", seed, *values)
    t = resolve_tables([table])[0]
    heading, lines = lead_notes(t, table_result(t, out, list(runs)).stats)
    assert heading.startswith("Lead over random init (bbox/AP50")
    assert lines == ["supervised: +20.0 = +20.0 sd of random init (60.0±1.0, 3 trials): beyond its spread",
                     "close: +1.0 = +1.0 sd of random init (60.0±1.0, 3 trials): within its spread"]
    one = resolve_tables([table], trials=1)[0]
    _, lines = lead_notes(one, table_result(one, out, list(runs)).stats)
    assert lines[0] == ("supervised: +21.0; random init's spread not measured (1 trial; RANDOM_TRIALS or TRIALS 2 or more "
                        "measures it)")


def test_random_trials_measure_the_spread_while_other_rows_run_table_trials(tmp_path):
    """RANDOM_TRIALS 3 over TRIALS 1: random init's three seeds are collated and give the spread
    each lead is judged by; another row's seed1 is no trial of its row and is left out; run-all
    plans three random-init jobs and one per other init."""
    from mocobench.results.collate import lead_notes, table_result
    from mocobench.results.plan import expand
    from mocobench.results.tables import Init

    table = tmp_path / "test_voc.yaml"
    table.write_text(TABLE.replace("TRIALS: 3", "TRIALS: 1\nRANDOM_TRIALS: 3"))
    out = tmp_path / "runs"
    runs = {"random": {0: (59.0, 30.0, 28.0), 1: (60.0, 30.0, 28.0), 2: (61.0, 30.0, 28.0)},
            "supervised": {0: (80.0, 50.0, 55.0), 1: (10.0, 5.0, 5.0)}, "close": {0: (61.0, 31.0, 29.0)}}
    for init, seeds in runs.items():
        for seed, values in seeds.items():
            write_run(out / "test_voc" / init / f"seed{seed}", seed, *values)
    t = resolve_tables([table])[0]
    result = table_result(t, out, list(runs))
    ap50 = result.stats[(result.stats["metric"] == "bbox/AP50") & (result.stats["source"] == "measured")]
    assert ap50.set_index("row")[["n", "trials", "mean"]].to_dict("index") == {
        "random": {"n": 3, "trials": 3, "mean": 60.0}, "supervised": {"n": 1, "trials": 1, "mean": 80.0},
        "close": {"n": 1, "trials": 1, "mean": 61.0}}
    assert result.left_out == ["test_voc/supervised/seed1: seed 1 is not one of this row's trials (seeds 0..0)"]
    assert lead_notes(t, result.stats)[1] == [
        "supervised: +20.0 = +20.0 sd of random init (60.0±1.0, 3 trials): beyond its spread",
        "close: +1.0 = +1.0 sd of random init (60.0±1.0, 3 trials): within its spread"]
    inits = {n: Init(n, None, "RGB") for n in ("random", "supervised")}
    planned = [(j.init.name, j.seed) for j in expand([t], inits, tmp_path / "plan")]
    assert planned == [("random", 0), ("random", 1), ("random", 2), ("supervised", 0)]
    assert resolve_tables([table], trials=4)[0].seeds_for("random") == [0, 1, 2, 3]  # --trials above it wins
