"""Collate run folders into the paper's tables: RUN_ROOT/<table>/<init>/seed<k>/metrics.json.

For each table: one row per init, one column per metric; a cell is the mean over the
finished trials, "±std" when there are several, "[n/N]" when fewer than the table's N
trials finished, and the delta against the baseline row (supervised) in the paper's form
"81.4 (+0.6)". The published rows (paper / authors' repo, results/paper/) follow, with
their deltas against the published baseline. A cell without any finished run is "—",
never a zero. A run left out is listed with why: unfinished, an unreadable metrics.json, or
recorded inputs (digests.json) that are not the table's (an edited config, other weights).
Writes report.md, report.html (self-contained), results.csv (every number),
and per table <table>.csv (the cells as shown) and <table>.png (delta vs baseline per
metric, error bars = std over trials).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import pandas as pd

from mocobench import UserError
from mocobench.atomic import check_file_target, write_text
from mocobench.results.format import html_report, markdown_table, table_cells
from mocobench.results.paper import paper_rows
from mocobench.results.plot import write_delta_plot
from mocobench.digests import changed, read_digests
from mocobench.results.plan import expected_digests, recorded_world_size
from mocobench.results.runs import RunCheck, init_names, table_runs
from mocobench.results.tables import Init, Table, add_trials_argument, load_inits, resolve_tables, table_files

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
    agg["trials"] = table.cfg.TRIALS
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
    stats["delta"] = (stats["mean"].to_numpy() - base.reindex(key).to_numpy())
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


def table_stats(table: Table, run_root: Path, rows: Sequence[str], inits: dict[str, Init] | None = None
                ) -> pd.DataFrame:
    runs, skipped = table_runs(run_root, table.name, table.metrics, belongs(table, inits))
    for run_dir, why in skipped:
        print(f"{run_dir.relative_to(run_root)}: skipped: {why}")
    runs = runs[runs["seed"].isin(table.seeds)]  # the table's trials: seeds 0..TRIALS-1
    stats = pd.concat([measured_stats(table, runs, rows), published_stats(table)], ignore_index=True)
    stats = with_deltas(stats)
    stats.insert(0, "table", table.name)
    return stats[STAT_COLUMNS]


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
    sections, all_stats = [], []
    tables = collate_tables(run_root, args.tables, args.trials)
    for table in tables:
        rows = table_rows(table, run_root, inits and list(inits))
        if not rows and not table.cfg.PAPER.FILE:
            print(f"{table.name}: skipped: no init folders under {run_root / table.name} and no published rows")
            continue
        stats = table_stats(table, run_root, rows, inits)
        cells = table_cells(table, stats)
        png = out / f"{table.name}.png"
        write_delta_plot(table, stats, png)
        write_text(out / f"{table.name}.csv", cells.to_csv(index=False))
        sections.append((table, cells, png))
        all_stats.append(stats)
        missing = int((stats["source"].eq("measured") & stats["n"].eq(0)).sum())
        print(f"{table.name}: {cells.shape[0]} rows, {missing} missing cells")
    if not sections:
        raise UserError(f"{run_root}: nothing to collate (no runs of {', '.join(t.name for t in tables)})")
    write_text(out / "results.csv", pd.concat(all_stats, ignore_index=True).to_csv(index=False))
    write_text(out / "report.md", "\n".join(markdown_table(t, c) for t, c, _ in sections))
    write_text(out / "report.html", html_report(sections))
    print(f"wrote {out}/report.md, report.html, results.csv and one .csv/.png per table")
    return 0
