"""A sweep's report: one table per group of runs, the momentum table beside the paper's,
Figure 3 (top-1 vs K, a line per mechanism) and Table 3 (the mechanisms' detection
transfer beside the paper's rows). Written to report.md, runs.csv, figure3.png and one
<table>.csv per detection table; a run that has not finished shows "—", never a zero.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd

from mocobench.atomic import atomic_write, write_text
from mocobench.progress import read_jsonl
from mocobench.results.collate import table_result
from mocobench.results.format import MISSING, markdown_table, table_cells
from mocobench.results.paper import PAPER_DIR
from mocobench.results.runs import finite_number, read_result_file
from mocobench.results.sweep import Run, Sweep
from mocobench.results.tables import load_table

ABLATIONS = PAPER_DIR / "ablations.csv"
COLUMNS = ["group", "run", "mechanism", "K", "m", "shuffle_bn", "loss", "ln(1+K)", "acc1", "acc1_batch",
           "key_cos", "knn_top1", "lincls_top1"]


def pretext(folder: Path) -> dict[str, float]:
    """Mean loss / instance accuracies / key cosine over the last epoch's logged steps."""
    path = folder / "metrics.jsonl"
    steps = [e for e in read_jsonl(path) if "loss" in e] if path.is_file() else []
    if not steps:
        return {}
    last = [e for e in steps if e["epoch"] == steps[-1]["epoch"]]
    return {k: sum(e[k] for e in last) / len(last) for k in ("loss", "acc1", "acc1_batch", "key_cos")}


def read_result(path: Path, key: str) -> tuple[float | None, str]:
    """(the number under ``key`` in a result JSON, "") or (None, why not): a half-written or
    unreadable file is no result, so the job that writes it runs again."""
    data, why = read_result_file(path, f"no {path.name}")
    if why:
        return None, why
    value = finite_number(data.get(key) if isinstance(data, dict) else None)
    return (value, "") if value is not None else (None, f"{path.name} has no number under {key!r}")


def knn_key(sweep: Sweep) -> str:
    """The kNN result the sweep reports: top-1 at the first k of its kNN config."""
    from mocobench.pretrain.config import load_pretrain_config

    return f"top1@{list(load_pretrain_config(sweep.relative(sweep.cfg.EVAL.KNN)).KNN.K)[0]}"


def evaluation(sweep: Sweep, run: Run, out: Path) -> dict[str, float]:
    """The run's kNN / linear-probe top-1; a result file present but unusable is named and left "—"."""
    result: dict[str, float] = {}
    wanted = [("knn_top1", out / run.name / "knn.json", knn_key(sweep) if sweep.cfg.EVAL.KNN else None),
              ("lincls_top1", out / run.name / "lincls" / "metrics.json", "top1")]
    for column, path, key in wanted:
        if key is None or not path.is_file():
            continue
        value, why = read_result(path, key)
        if value is None:
            print(f"{path}: {why}; shown as {MISSING}")
        else:
            result[column] = value
    return result


def runs_frame(sweep: Sweep, out: Path) -> pd.DataFrame:
    rows = []
    for group in sweep.groups:
        for run in group.runs:
            rows.append({"group": group.name, "run": run.name, "mechanism": run.mechanism, "K": run.K,
                         "m": run.m if run.mechanism == "moco" else float("nan"),
                         "shuffle_bn": run.shuffle_bn if run.mechanism != "memory_bank" else None,
                         "ln(1+K)": math.log(1 + run.K), **pretext(out / run.name / "pretrain"),
                         **evaluation(sweep, run, out)})
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


def _text(v: object) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(_text(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def momentum_table(frame: pd.DataFrame, metric: str) -> str:
    """The paper's layout: one column per m, the measured row above the published one."""
    runs = frame.sort_values("m").drop_duplicates("m")
    paper = pd.read_csv(ABLATIONS, dtype=str, keep_default_na=False)
    paper = dict(paper[paper["table"] == "momentum"][["value", "top1"]].itertuples(index=False))
    cols = [f"{m:g}" for m in runs["m"]]
    measured = [_text(v) for v in runs[f"{metric}_top1"]]
    losses = [f"{_text(l)} / {_text(b)}" for l, b in zip(runs["loss"], runs["ln(1+K)"])]
    published = [paper.get(c, MISSING) for c in cols]
    return "\n".join([
        "| momentum m | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
        f"| measured {metric} top-1 (%) | " + " | ".join(measured) + " |",
        "| measured loss / ln(1+K) | " + " | ".join(losses) + " |",
        "| paper linear top-1 (R50 IN-1M, K=4096) | " + " | ".join(published) + " |"]) + "\n"


def write_figure3(frame: pd.DataFrame, metric: str, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = f"{metric}_top1"
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=100)
    for mechanism, part in frame.dropna(subset=[column]).groupby("mechanism", sort=False):
        part = part.sort_values("K").drop_duplicates("K")
        ax.plot(part["K"], part[column], marker="o", label=mechanism.replace("_", "-"))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (negatives)")
    ax.set_ylabel(f"{metric} top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def write_report(sweep: Sweep, out: Path, report: Path) -> None:
    """report.md: a table per group, then the momentum table and Figure 3 over every group
    that feeds them, then each detection table; runs.csv: every number."""
    frame = runs_frame(sweep, out)
    metric = sweep.cfg.EVAL.METRIC
    write_text(report / "runs.csv", frame.to_csv(index=False))
    parts = [f"# {sweep.title}", "", f"Sweep file: `{sweep.path}`. Pretext columns: means over each run's last "
             "epoch (loss vs ln(1+K), the loss of equal logits; acc1: positive among 1+K; acc1_batch: among the "
             f"batch's keys; key_cos: mean cosine of the dictionary's keys). {MISSING}: not finished.", ""]
    for group in sweep.groups:
        rows = frame[frame["group"] == group.name].drop(columns="group")
        parts += [f"## {group.name} ({group.cfg.REPORT})", "", markdown(rows)]
    reported = {kind: frame[frame["group"].isin([g.name for g in sweep.groups if g.cfg.REPORT == kind])]
                for kind in ("momentum", "figure3")}
    if len(reported["momentum"]):
        parts += ["## Momentum (paper Sec. 4.1)", "", momentum_table(reported["momentum"], metric)]
    if len(reported["figure3"]):
        write_figure3(reported["figure3"], metric, f"Figure 3 ({sweep.name}): {metric} top-1 vs K",
                      report / "figure3.png")
        parts += ["## Figure 3", "", f"![Figure 3: {metric} top-1 vs K, a line per mechanism](figure3.png)", ""]
    for table_path, runs in sweep.detection_runs().items():
        table = load_table(table_path)
        result = table_result(table, out / "detection", [r.name for r in runs])
        cells = table_cells(table, result.stats)
        write_text(report / f"{table.name}.csv", cells.to_csv(index=False))
        parts += [markdown_table(table, cells, result.sections())]
    write_text(report / "report.md", "\n".join(parts))
