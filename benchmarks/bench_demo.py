"""The demo's time in a unit that does not depend on the machine: seconds x sgemm GFLOP/s.

Runs ``mocobench demo`` from scratch into a temporary folder (or --output-dir), then prints its
task times and RATIO demo_seconds_x_gflops against the budget: 10 minutes on a 2-core machine
whose torch sgemm runs at 61 GFLOP/s, i.e. 600 x 61 = 36,600. A slower demo shows up as a larger
number on any machine. The rate is measured by the demo itself (its header, demo.json), at the
demo's thread count.

Run from the checkout root: python -m benchmarks.bench_demo [--output-dir D] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import timing

BUDGET = 600 * 61.0  # seconds x GFLOP/s: 10 minutes at 61 GFLOP/s
# "[demo] <task> finished in MM:SS (elapsed MM:SS, ETA MM:SS)"
STAGE_LINE = re.compile(r"^\[demo\] (\S+) finished in (\S+)")


def stage_times(output: str) -> dict[str, str]:
    """Task name -> the time the demo printed for it (data, pretrain, ..., <table>/<init>, collate)."""
    return {m.group(1): m.group(2) for line in output.splitlines() if (m := STAGE_LINE.match(line))}


def run_demo(out: Path, overrides: list[str]) -> tuple[float, float, dict[str, str]]:
    """(wall seconds, the demo's measured sgemm GFLOP/s, task times) of one demo run."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mocobench", "demo", "--output-dir", str(out), *overrides],
                          capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_demo: the demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    gflops = json.loads((out / "demo.json").read_text())["machine"]["sgemm_gflops"]
    return seconds, gflops, stage_times(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", help="an empty or new folder for the demo (default: a temporary one)")
    p.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="demo settings, e.g. TRIALS 1")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or Path(tmp) / "demo")
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"bench_demo: {out} is not empty: the demo would resume instead of running")
        seconds, gflops, stages = run_demo(out, args.overrides)
    print("  tasks: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"  demo {seconds:.0f} s at sgemm {gflops:.0f} GFLOP/s")
    timing.report_ratio("demo_seconds_x_gflops / budget", seconds * gflops, BUDGET, "<= 1", seconds * gflops <= BUDGET)


if __name__ == "__main__":
    main()
