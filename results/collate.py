"""Collate run folders into the paper's tables: RUN_ROOT/<table>/<init>/seed<k>/metrics.json.

For each table: one row per init, one column per metric; a cell is the mean over the
finished trials, "±std" when there are several, "[n/N]" when fewer than the table's N
trials finished, and the delta against the baseline row (supervised) in the paper's form
"81.4 (+0.6)". The published rows (paper / authors' repo, results/paper/) follow, with
their deltas against the published baseline. A cell without any finished run is "—",
never a zero; a note under the table says why for each cell shown as "—" or without its delta
(no finished run, a value that is not a number, no baseline value). A run left out is listed
under the table and printed with why: unfinished, an unreadable or eval-only metrics.json, a
seed outside the table's trials, a folder moved aside, or recorded inputs (digests.json) that
are not the table's (an edited config, other weights). Two finished runs of one seed for one
init are refused: either could be the trial that counts.
Writes report.md, report.html (self-contained), results.csv (every number),
and per table <table>.csv (the cells as shown) and <table>.png (delta vs baseline per
metric, error bars = std over trials).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from mocobench import UserError
from mocobench.atomic import check_file_target, write_text
from mocobench.results.format import MISSING, Notes, column_names, html_report, markdown_table, table_cells
from mocobench.results.paper import paper_rows
from mocobench.results.plot import write_delta_plot
from mocobench.digests import changed, read_digests
from mocobench.results.plan import expected_digests, recorded_world_size
from mocobench.results.runs import RunCheck, TableRuns, init_names, table_runs
from mocobench.results.tables import RANDOM_ROW, Init, Table, add_trials_argument, load_inits, resolve_tables, table_files

STAT_COLUMNS = ["table", "row", "source", "baseline", "metric", "n", "trials", "mean", "std", "delta"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_root", metavar="RUN_ROOT", help="the --output folder of run-all")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md/.html, results.csv, PNGs")
    p.add_argument("--tables", nargs="+", metavar="TABLE",
                   help="table names or paths; default: every table with a folder under RUN_ROOT")
    add_trials_argument(p)
    p.add_argument("--inits", metavar="FILE",
                   help="inits file: its names are the rows, in its order (missing ones show as —); "
                        "default: the init folders found under each table")


def measured_stats(table: Table, runs: pd.DataFrame, rows: Sequence[str]) -> pd.DataFrame:
    """Mean/std/n per (init, metric), every row x metric present (n=0 where nothing finished)."""
    grid = pd.MultiIndex.from_product([list(rows), table.metrics], names=["row", "metric"])
    agg = (runs.rename(columns={"init": "row"}).groupby(["row", "metric"])["value"]
           .agg(n="count", mean="mean", std="std").reindex(grid).reset_index())
    agg["n"] = agg["n"].fillna(0).astype(int)
    agg["std"] = agg["std"].where(agg["n"] >= 2)
    agg["source"] = "measured"
    agg["trials"] = agg["row"].map(table.trials_for)
    agg["baseline"] = agg["row"] == table.cfg.BASELINE
    return agg


def published_stats(table: Table) -> pd.DataFrame:
    wide = paper_rows(table)
    long = wide.melt(id_vars=["label", "source", "baseline"], value_vars=table.metrics,
                     var_name="metric", value_name="mean")
    long["row"] = long["source"] + ": " + long["label"]
    long["n"], long["trials"], long["std"] = 1, 1, float("nan")
    return long.drop(columns="label")


def with_deltas(stats: pd.DataFrame) -> pd.DataFrame:
    """delta = row mean - baseline mean of the same source and metric (none for the baseline)."""
    base = stats[stats["baseline"]].groupby(["source", "metric"])["mean"].first()
    key = pd.MultiIndex.from_frame(stats[["source", "metric"]])
    stats = stats.copy()
    stats["delta"] = stats["mean"].to_numpy(dtype=float) - base.reindex(key).to_numpy(dtype=float)
    stats.loc[stats["baseline"], "delta"] = float("nan")
    return stats


def belongs(table: Table, inits: dict[str, Init] | None) -> RunCheck:
    """A check that a run's recorded digests are those of a job of this table (config at the
    run's world size, seed, and the init's weights when the inits file is given)."""
    def check(init_name: str, seed: int, run_dir: Path) -> str | None:
        stored = read_digests(run_dir)
        if stored is None:
            return None  # a run from before digests were recorded: nothing to compare
        world = recorded_world_size(run_dir) or 1
        init = (inits or {}).get(init_name)
        configs = [table.config_for(init.format)] if init else table.config_paths()
        differs: list[str] = []
        for config in configs:
            try:
                expected = expected_digests(table, config, init.weights if init else None, seed, world,
                                            str(stored.get("engine")))
                ignored = set() if init else {"weights"}
            except UserError:  # weights file gone: the config and seed can still be compared
                expected = expected_digests(table, config, None, seed, world, str(stored.get("engine")))
                ignored = {"weights"}
            differs = [n for n in changed(stored, expected) if n not in ignored]
            if not differs:
                return None
        return f"its inputs differ from the table's ({', '.join(differs)}); rerun it with run-all"
    return check


@dataclass
class TableResult:
    stats: pd.DataFrame
    notes: list[str] = field(default_factory=list)  # why a cell is missing or has no delta
    left_out: list[str] = field(default_factory=list)  # "<run folder>: <why>" per run left out
    leads: tuple[str, list[str]] = ("", [])  # heading and a line per row: its lead over random init's spread

    def sections(self) -> Notes:
        return [(f"Why a cell is {MISSING} or has no delta:", self.notes), ("Runs left out:", self.left_out),
                self.leads]


LEAD_SDS = 2.0  # a lead counts as beyond random init's spread above this many of its standard deviations


def lead_notes(table: Table, stats: pd.DataFrame) -> tuple[str, list[str]]:
    """Each measured row's lead over random init on the table's lead metric, in random init's
    standard deviations over its trials, so a reader sees which cells are within noise."""
    metric = table.cfg.LEAD_METRIC or table.metrics[0]
    measured = stats[(stats["source"] == "measured") & (stats["metric"] == metric)].set_index("row")
    if RANDOM_ROW not in measured.index or measured.loc[RANDOM_ROW, "n"] == 0:
        return "", []
    ref = measured.loc[RANDOM_ROW]
    heading = f"Lead over {RANDOM_ROW} init ({metric}; beyond its spread: more than {LEAD_SDS:g} of its sd):"
    lines = []
    for row, s in measured.drop(index=RANDOM_ROW).iterrows():
        if s["n"] == 0:
            continue
        lead = s["mean"] - ref["mean"]
        if ref["n"] < 2:
            lines.append(f"{row}: {lead:+.1f}; {RANDOM_ROW} init's spread not measured ({int(ref['n'])} trial; "
                         "RANDOM_TRIALS or TRIALS 2 or more measures it)")
            continue
        sds = lead / ref["std"] if ref["std"] > 0 else math.copysign(math.inf, lead) if lead else 0.0
        verdict = "beyond its spread" if sds > LEAD_SDS else "within its spread" if sds >= -LEAD_SDS else "below it"
        lines.append(f"{row}: {lead:+.1f} = {sds:+.1f} sd of {RANDOM_ROW} init "
                     f"({ref['mean']:.1f}±{ref['std']:.1f}, {int(ref['n'])} trials): {verdict}")
    return heading, lines


def table_result(table: Table, run_root: Path, rows: Sequence[str], inits: dict[str, Init] | None = None
                 ) -> TableResult:
    """The table's numbers (mean, std, n, delta per row and metric), the notes on its missing
    cells and the runs it left out; prints each left-out run."""
    runs = table_runs(run_root, table.name, table.metrics, belongs(table, inits), table.seeds_for)
    left_out = [f"{run_dir.relative_to(run_root)}: {why}" for run_dir, why in runs.skipped]
    for line in left_out:
        print(line.replace(": ", ": skipped: ", 1))
    stats = pd.concat([measured_stats(table, runs.values, rows), published_stats(table)], ignore_index=True)
    for col in ("mean", "std"):  # an empty published frame leaves object columns: NaN, never None
        stats[col] = pd.to_numeric(stats[col], errors="coerce")
    stats = with_deltas(stats)
    stats.insert(0, "table", table.name)
    stats = stats[STAT_COLUMNS]
    return TableResult(stats, cell_notes(table, stats, runs), left_out, lead_notes(table, stats))


def table_stats(table: Table, run_root: Path, rows: Sequence[str], inits: dict[str, Init] | None = None
                ) -> pd.DataFrame:
    return table_result(table, run_root, rows, inits).stats


def cell_notes(table: Table, stats: pd.DataFrame, runs: TableRuns) -> list[str]:
    """A line per row (or per cell where the row's cells differ) shown as — or without a delta, saying why."""
    inits_left_out = {d.parent.name for d, _ in runs.skipped}
    base, cols = table.cfg.BASELINE, dict(zip(table.metrics, column_names(table)))
    notes = []
    for (row, source), part in stats.groupby(["row", "source"], sort=False):
        whys = {}
        for s in part.itertuples(index=False):
            why = _cell_why(s, source, runs, row in inits_left_out, base)
            if why:
                whys[cols[s.metric]] = why
        if len(whys) == len(table.metrics) and len(set(whys.values())) == 1:
            notes.append(f"{row}: {next(iter(whys.values()))}")
        else:
            notes += [f"{row}, {col}: {why}" for col, why in whys.items()]
    return notes


def _cell_why(s: Any, source: str, runs: TableRuns, any_left_out: bool, base: str) -> str:
    """Why one cell lacks its number, some trials or its delta ("" when it lacks nothing)."""
    bad = [f"seed{seed}: {why}" for init, seed, m, why in runs.problems if init == s.row and m == s.metric]
    if source != "measured":
        if pd.isna(s.mean):
            return f"not among the published numbers of {source}"
    elif s.n == 0:
        if bad:
            return f"no number ({'; '.join(bad)})"
        return "no finished run" + (" (runs left out: listed below)" if any_left_out else "")
    elif bad:
        return f"{s.n} of {s.trials} trials: {'; '.join(bad)}"
    if base and not s.baseline and pd.isna(s.delta) and not pd.isna(s.mean):
        return f"no delta (baseline {base if source == 'measured' else source + ' baseline'} has no value here)"
    return ""


def table_rows(table: Table, run_root: Path, inits: Sequence[str] | None) -> list[str]:
    if inits is not None:
        return [n for n in inits if not table.cfg.INITS or n in table.cfg.INITS]
    found = init_names(run_root, table.name)
    return list(dict.fromkeys([*table.cfg.INITS, *found]))


def collate_tables(run_root: Path, names: Sequence[str] | None, trials: int | None = None) -> list[Table]:
    if names:
        return resolve_tables(names, trials=trials)
    present = {p.name for p in run_root.iterdir() if p.is_dir()} if run_root.is_dir() else set()
    tables = [t for t in resolve_tables([p.stem for p in table_files()], trials=trials) if t.name in present]
    if not tables:
        raise UserError(f"{run_root}: no table folders (expected {run_root}/<table>/<init>/seed<k>/)")
    return tables


def run(args: argparse.Namespace) -> int:
    run_root, out = Path(args.run_root), Path(args.out)
    check_file_target(out / "report.md")  # a file in the way fails before any table is read
    inits = load_inits(args.inits) if args.inits else None
    tables = collate_tables(run_root, args.tables, args.trials)
    results = []  # every table read (and any duplicate seed refused) before anything is written
    for table in tables:
        rows = table_rows(table, run_root, inits and list(inits))
        if not rows and not table.cfg.PAPER.FILE:
            print(f"{table.name}: skipped: no init folders under {run_root / table.name} and no published rows")
            continue
        results.append((table, table_result(table, run_root, rows, inits)))
    if not results:
        raise UserError(f"{run_root}: nothing to collate (no runs of {', '.join(t.name for t in tables)})")
    sections, markdown = [], []
    for table, result in results:
        cells = table_cells(table, result.stats)
        png = out / f"{table.name}.png"
        write_delta_plot(table, result.stats, png)
        write_text(out / f"{table.name}.csv", cells.to_csv(index=False))
        sections.append((table, cells, png, result.sections()))
        markdown.append(markdown_table(table, cells, result.sections()))
        missing = int((result.stats["source"].eq("measured") & result.stats["n"].eq(0)).sum())
        print(f"{table.name}: {cells.shape[0]} rows, {missing} missing cells, {len(result.left_out)} runs left out")
    write_text(out / "results.csv", pd.concat([r.stats for _, r in results], ignore_index=True).to_csv(index=False))
    write_text(out / "report.md", "\n".join(markdown))
    write_text(out / "report.html", html_report(sections))
    print(f"wrote {out}/report.md, report.html, results.csv and one .csv/.png per table")
    return 0
