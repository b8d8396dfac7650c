"""Shared fixtures: run the real CLI in a subprocess, from this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m mocobench ARGS`` from the repository root; returns the finished process."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mocobench", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def run_cli_at_once(commands: dict[str, Sequence], timeout: float = 600) -> dict[str, subprocess.CompletedProcess]:
    """label -> finished ``python -m mocobench ARGS``, all started at once: most of a refusal's
    time is the interpreter importing torch, which overlaps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {label: subprocess.Popen([sys.executable, "-m", "mocobench", *map(str, argv)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label, argv in commands.items()}
    done = {}
    for label, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        done[label] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return done


def one_line_refusals(results: dict[str, subprocess.CompletedProcess], expected: dict[str, str]) -> list[str]:
    """Labels (with their stderr) of results that are not a non-zero exit with one stderr line,
    no traceback, containing the expected text."""
    bad = []
    for label, r in results.items():
        lines = r.stderr.strip().splitlines()
        if r.returncode == 0 or "Traceback" in r.stderr or len(lines) != 1 or expected[label] not in lines[0]:
            bad.append(f"{label}: exit {r.returncode}, stderr {r.stderr.strip()[-400:]!r}")
    return bad


@pytest.fixture
def cli():
    return run_cli
