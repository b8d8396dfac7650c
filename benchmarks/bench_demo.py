"""The demo's time in a unit meant not to depend on the machine: seconds x sgemm GFLOP/s.

Runs ``mocobench demo`` from scratch into a temporary folder (or --output-dir), then prints its
task times and RATIO demo_seconds_x_gflops against the budget: 10 minutes on a 2-core machine
whose torch sgemm runs at 61 GFLOP/s, i.e. 600 x 61 = 36,600. A slower demo shows up as a larger
number on any machine. The rate is measured by the demo itself (its header, demo.json), at the
demo's thread count.

The unit holds within one vector ISA, not across them: on an AVX-512 CPU, sgemm runs ~2x
faster than with AVX2 kernels, the demo's small convolutions only ~1.2x (docs/NOTES.md, "The
demo's time budget across CPUs"). ``--isa avx2`` runs the demo and its probe with torch, MKL
and oneDNN limited to AVX2 kernels, the ISA of the budget's reference machine. Beside the
budget's unit it prints demo seconds x the one-thread rate of demo-scale convolutions
(``mocobench.machine.conv_gflops``, also in demo.json): the demo's own kind of work, a unit
with no budget set yet.

Run from the checkout root: python -m benchmarks.bench_demo [--output-dir D] [KEY VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import timing

BUDGET = 600 * 61.0  # seconds x GFLOP/s: 10 minutes at 61 GFLOP/s
# the environment that limits torch's own kernels, MKL's sgemm and oneDNN's convolutions to AVX2
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
# "[demo] <task> finished in MM:SS (elapsed MM:SS, ETA MM:SS)"
STAGE_LINE = re.compile(r"^\[demo\] (\S+) finished in (\S+)")


def stage_times(output: str) -> dict[str, str]:
    """Task name -> the time the demo printed for it (data, pretrain, ..., <table>/<init>, collate)."""
    return {m.group(1): m.group(2) for line in output.splitlines() if (m := STAGE_LINE.match(line))}


def run_demo(out: Path, overrides: list[str], env: dict[str, str] | None = None) -> tuple[float, dict, dict[str, str]]:
    """(wall seconds, the machine figures the demo measured (demo.json), task times) of one demo run."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mocobench", "demo", "--output-dir", str(out), *overrides],
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench_demo: the demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    machine = json.loads((out / "demo.json").read_text())["machine"]
    return seconds, machine, stage_times(done.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", help="an empty or new folder for the demo (default: a temporary one)")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="native: the CPU's own kernels (default); avx2: torch, MKL and oneDNN limited to AVX2, "
                        "the budget's reference ISA, on a CPU with AVX-512")
    p.add_argument("overrides", nargs="*", metavar="KEY VALUE", help="demo settings, e.g. TRIALS 1")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.output_dir or Path(tmp) / "demo")
        if out.exists() and any(out.iterdir()):
            raise SystemExit(f"bench_demo: {out} is not empty: the demo would resume instead of running")
        seconds, machine, stages = run_demo(out, args.overrides, AVX2_ONLY if args.isa == "avx2" else None)
    gflops, conv = machine["sgemm_gflops"], machine["conv_gflops"]
    print("  tasks: " + ", ".join(f"{k} {v}" for k, v in stages.items()))
    print(f"  demo {seconds:.0f} s on {machine['cpu']} at sgemm {gflops:.0f} GFLOP/s ({args.isa} kernels); "
          f"x one-thread demo-scale convolutions at {conv:.1f} GFLOP/s: {seconds * conv:.0f}")
    timing.report_ratio("demo_seconds_x_gflops / budget", seconds * gflops, BUDGET, "<= 1", seconds * gflops <= BUDGET)


if __name__ == "__main__":
    main()
