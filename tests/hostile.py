"""The hostile-input harness: run a ``mocobench`` command in this process (no interpreter start,
so hundreds of cases stay fast) and check that it refused in one line, with a non-zero exit,
leaving what was on disk untouched."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from mocobench.cli import main


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def run_here(argv: Sequence, capsys) -> Outcome:
    """``mocobench ARGV`` run through the CLI's own entry point; SystemExit (argparse) counts too."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


LOCK_FILES = {".lock", ".run-all.lock"}  # they record who last held the folder, not a result


def snapshot(paths: Iterable[str | os.PathLike]) -> dict[str, str]:
    """path -> sha256 of every file under ``paths`` (folders included as entries; a lock file
    counts by its presence alone)."""
    state: dict[str, str] = {}
    for root in map(Path, paths):
        if not root.exists():
            state[str(root)] = "absent"
            continue
        for p in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            if p.is_dir() or p.name in LOCK_FILES:
                state[str(p)] = "present"
            else:
                state[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def refusal_problems(outcome: Outcome, expected: str) -> list[str]:
    """What is wrong with ``outcome`` as a one-line refusal holding ``expected`` (empty: nothing)."""
    lines = outcome.stderr.strip().splitlines()
    problems = []
    if outcome.code in (0, None):
        problems.append(f"exit {outcome.code}")
    if "Traceback" in outcome.stderr:
        problems.append("a traceback")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if expected not in outcome.stderr:
        problems.append(f"no {expected!r} in the message")
    if "internal error" in outcome.stderr:
        problems.append("an internal error, not a refusal")
    return problems


def assert_refused(argv: Sequence, expected: str, capsys, untouched: Iterable[str | os.PathLike] = ()) -> Outcome:
    """Run ``argv``; it must refuse in one line holding ``expected`` and change nothing under ``untouched``."""
    untouched = list(untouched)
    before = snapshot(untouched)
    outcome = run_here(argv, capsys)
    problems = refusal_problems(outcome, expected)
    after = snapshot(untouched)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        problems.append(f"changed on disk: {changed[:5]}")
    assert not problems, f"{' '.join(map(str, argv))}: {'; '.join(problems)}; stderr: {outcome.stderr.strip()[-500:]!r}"
    return outcome
