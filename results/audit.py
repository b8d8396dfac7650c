"""Is the candidate's delta over the baseline real? Per metric: the mean delta, its
confidence interval over trials, and a verdict: better (the whole interval above 0), worse
(the whole interval below 0) or within noise.

CANDIDATE and BASELINE are folders holding finished run folders (metrics.json at any depth,
e.g. output/voc_R50_C4_24k/moco and output/voc_R50_C4_24k/supervised). When both sides
ran exactly the same seeds, trials are paired by seed (paired t on the per-seed
differences: seed-shared noise cancels); otherwise Welch's t on the two samples.
Each side needs at least 2 trials.

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
from mocobench.results.runs import collect_runs
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


def load_side(path: str) -> pd.DataFrame:
    runs = collect_runs(path)
    if runs.empty:
        raise UserError(f"{path}: no finished runs (no valid metrics.json below it)")
    if runs["seed"].isna().any():
        runs = runs.assign(seed=None)  # cannot pair without every seed known
    return runs


def compare(cand: pd.DataFrame, base: pd.DataFrame, metric: str, alpha: float) -> DeltaCI | None:
    c, b = cand[["seed", metric]].dropna(subset=[metric]), base[["seed", metric]].dropna(subset=[metric])
    seeds_c, seeds_b = list(c["seed"]), list(b["seed"])
    paired = (None not in seeds_c and sorted(seeds_c) == sorted(seeds_b)
              and len(set(seeds_c)) == len(seeds_c) >= 2)
    if paired:
        c, b = c.sort_values("seed"), b.sort_values("seed")
        return paired_ci(list(c[metric]), list(b[metric]), alpha)
    if len(c) < 2 or len(b) < 2:
        return None
    return welch_ci(list(c[metric]), list(b[metric]), alpha)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha {args.alpha}: must be between 0 and 1")
    cand, base = load_side(args.candidate), load_side(args.baseline)
    metrics = args.metrics or [m for m in DEFAULT_METRICS if m in cand.columns and m in base.columns]
    for m in metrics:
        for side, df, path in (("candidate", cand, args.candidate), ("baseline", base, args.baseline)):
            if m not in df.columns:
                raise UserError(f"{path}: the {side} runs have no metric {m}")
    level = f"{100 * (1 - args.alpha):g}%"
    results, verdicts = [], []
    for m in metrics:
        ci = compare(cand, base, m, args.alpha)
        if ci is None:
            verdicts.append(TOO_FEW)
            print(f"{m:12s} {TOO_FEW}: candidate {cand[m].count()}, baseline {base[m].count()} (need >= 2 each)")
            results.append({"metric": m, "verdict": TOO_FEW})
            continue
        verdict = ci.verdict()
        verdicts.append(verdict)
        df = "inf" if math.isinf(ci.df) else f"{ci.df:.1f}"
        print(f"{m:12s} delta {ci.delta:+.2f}  {level} CI [{ci.low:+.2f}, {ci.high:+.2f}]  {ci.test} "
              f"(n={ci.n_candidate} vs {ci.n_baseline}, df={df})  {verdict}")
        fields = {k: None if isinstance(v, float) and math.isinf(v) else v for k, v in asdict(ci).items()}
        results.append({"metric": m, "verdict": verdict, **fields})
    if args.json:
        text = json.dumps({"candidate": args.candidate, "baseline": args.baseline, "alpha": args.alpha,
                           "metrics": results}, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_text(Path(args.json), text)
    if "worse" in verdicts:
        return EXIT["worse"]
    return EXIT["too_few"] if TOO_FEW in verdicts else EXIT["ok"]
