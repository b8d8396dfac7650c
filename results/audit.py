"""Is the candidate's delta over the baseline real? Per metric: the mean delta, its
confidence interval over trials, and a verdict: better (the whole interval above 0), worse
(the whole interval below 0) or within noise.

CANDIDATE and BASELINE are folders holding finished run folders (metrics.json at any depth,
e.g. output/voc_R50_C4_24k/moco and output/voc_R50_C4_24k/supervised). When both sides
ran exactly the same seeds, trials are paired by seed (paired t on the per-seed
differences: seed-shared noise cancels); otherwise Welch's t on the two samples.
Each side needs at least 2 trials. A run left out (unfinished, eval-only, moved aside as
``.stale-``/``.replaced-``) is printed with why; a value that is not a number (a string,
null, NaN, a bool) is left out of its metric, which shows "—" with the reason when too few
trials remain; two finished runs of one seed on one side are refused, naming both.

Exit status, for scripts: 0 = no metric is worse (each better or within noise),
1 = at least one metric is worse, 3 = too few trials to judge some metric (none worse),
2 = bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from mocobench import UserError
from mocobench.atomic import write_text
from mocobench.results.format import MISSING
from mocobench.results.runs import FoundRuns, find_runs, unknown_metric
from mocobench.results.stats import DeltaCI, paired_ci, welch_ci

DEFAULT_METRICS = [f"{task}/{key}" for task in ("bbox", "segm") for key in ("AP", "AP50", "AP75")]
TOO_FEW = "too few trials"
EXIT = {"ok": 0, "worse": 1, "too_few": 3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="RUNS", help="folder of the candidate's run folders")
    p.add_argument("--baseline", required=True, metavar="RUNS", help="folder of the baseline's run folders")
    p.add_argument("--metrics", nargs="+", metavar="M",
                   help="metrics as <task>/<key>; default: those of bbox|segm AP, AP50, AP75 both sides have")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="1 - confidence level of the interval (default 0.05: a 95%% interval)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout)")


def load_side(path: str) -> FoundRuns:
    """The side's finished runs; each run folder left out is printed with why."""
    found = find_runs(path)
    for run_dir, why in found.skipped:
        print(f"{run_dir}: skipped: {why}")
    if found.frame.empty:
        raise UserError(f"{path}: no finished runs (no valid metrics.json below it; {len(found.skipped)} left out)")
    if found.frame["seed"].isna().any():
        found.frame = found.frame.assign(seed=None)  # cannot pair without every seed known
    return found


def compare(cand: pd.DataFrame, base: pd.DataFrame, metric: str, alpha: float) -> DeltaCI | None:
    c, b = (side.reindex(columns=["seed", metric]).dropna(subset=[metric]) for side in (cand, base))
    seeds_c, seeds_b = list(c["seed"]), list(b["seed"])
    paired = (None not in seeds_c and sorted(seeds_c) == sorted(seeds_b)
              and len(set(seeds_c)) == len(seeds_c) >= 2)
    if paired:
        c, b = c.sort_values("seed"), b.sort_values("seed")
        return paired_ci(list(c[metric]), list(b[metric]), alpha)
    if len(c) < 2 or len(b) < 2:
        return None
    return welch_ci(list(c[metric]), list(b[metric]), alpha)


def chosen_metrics(metrics: list[str] | None, cand: FoundRuns, base: FoundRuns) -> list[str]:
    """The named metrics (each a known one), else the default ones both sides record, naming one-sided ones."""
    for m in metrics or []:
        if unknown_metric(m):
            raise UserError(f"--metrics {m}: {unknown_metric(m)}")
    if metrics:
        return metrics
    c, b = cand.recorded(), base.recorded()
    for m in DEFAULT_METRICS:
        if (m in c) != (m in b):
            print(f"{m:12s} not compared: only the {'candidate' if m in c else 'baseline'}'s runs record it")
    return [m for m in DEFAULT_METRICS if m in c and m in b]


def left_out(metric: str, sides: dict[str, tuple[FoundRuns, str]]) -> list[str]:
    """"<side> <run>: <why>" for each run whose value of ``metric`` is not a number."""
    return [f"{side} {Path(run).relative_to(root)}: {why}" for side, (found, root) in sides.items()
            for run, why in found.problems(metric)]


def run(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: must be between 0 and 1")
    cand, base = load_side(args.candidate), load_side(args.baseline)
    metrics = chosen_metrics(args.metrics, cand, base)
    sides = {"candidate": (cand, args.candidate), "baseline": (base, args.baseline)}
    level = f"{100 * (1 - args.alpha):g}%"
    results, verdicts = [], []
    for m in metrics:
        dropped = left_out(m, sides)
        ci = compare(cand.frame, base.frame, m, args.alpha)
        n_c, n_b = (side.frame.reindex(columns=[m])[m].count() for side in (cand, base))
        if ci is None:
            verdicts.append(TOO_FEW)
            why = f"; left out: {'; '.join(dropped)}" if dropped else ""
            print(f"{m:12s} {MISSING}  {TOO_FEW}: candidate {n_c}, baseline {n_b} (need >= 2 each){why}")
            results.append({"metric": m, "verdict": TOO_FEW, "left_out": dropped})
            continue
        verdict = ci.verdict()
        verdicts.append(verdict)
        df = "inf" if math.isinf(ci.df) else f"{ci.df:.1f}"
        print(f"{m:12s} delta {ci.delta:+.2f}  {level} CI [{ci.low:+.2f}, {ci.high:+.2f}]  {ci.test} "
              f"(n={ci.n_candidate} vs {ci.n_baseline}, df={df})  {verdict}")
        for line in dropped:
            print(f"{'':12s} left out: {line}")
        fields = {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in asdict(ci).items()}
        results.append({"metric": m, "verdict": verdict, **fields, "left_out": dropped})
    if args.json:
        skipped = [{"run_dir": str(d), "why": why} for found in (cand, base) for d, why in found.skipped]
        text = json.dumps({"candidate": args.candidate, "baseline": args.baseline, "alpha": args.alpha,
                           "metrics": results, "skipped": skipped}, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_text(Path(args.json), text)
    if "worse" in verdicts:
        return EXIT["worse"]
    return EXIT["too_few"] if TOO_FEW in verdicts else EXIT["ok"]
