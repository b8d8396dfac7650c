"""Tables x inits x seeds -> jobs, each with its run folder, state and ``mocobench transfer`` argv.

A job's state comes from its folder (finished: a valid metrics.json; interrupted: a
checkpoint to resume from; else new), so run_all can be killed and re-run at any time and
only ever runs what is unfinished; and from its inputs: a folder whose recorded digests
(digests.json) no longer match the job's config, weights, seed or engine is stale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fvcore.common.config import CfgNode

from mocobench.conventions import LAST_CHECKPOINT
from mocobench.digests import Digests, changed, read_digests
from mocobench.transfer.config import load_detection_config, scaled_schedule
from mocobench.transfer.run_digests import planned_digests
from mocobench.results.runs import read_metrics, seed_dir
from mocobench.results.tables import Init, Table, select_inits

DONE, RESUME, NEW, STALE = "done", "resume", "new", "stale"


@dataclass
class PlannedRun:
    table: Table
    init: Init
    seed: int
    run_dir: Path
    config: Path
    overrides: list[str] = field(default_factory=list)  # KEY VALUE pairs from worker scaling
    stale: list[str] = field(default_factory=list)  # inputs changed since the folder's run: start afresh

    @property
    def name(self) -> str:
        return f"{self.table.name}/{self.init.name}/{seed_dir(self.seed)}"

    @property
    def state(self) -> str:
        if read_metrics(self.run_dir, self.table.metrics) is not None:
            return DONE
        return RESUME if (self.run_dir / LAST_CHECKPOINT).is_file() else NEW

    def transfer_args(self, engine: str, data_root: str | None) -> list[str]:
        """Arguments of ``mocobench transfer`` for this job (after the command name)."""
        args = ["--config", str(self.config), "--output-dir", str(self.run_dir),
                "--seed", str(self.seed), "--engine", engine]
        if self.init.weights is not None:
            args += ["--weights", str(self.init.weights)]
        if data_root:
            args += ["--data-root", str(data_root)]
        if self.state == RESUME and not self.stale:
            args.append("--resume")
        return args + self.overrides


def recorded_world_size(run_dir: Path) -> int | None:
    """The world size the folder's run used (its metrics.json, else its job.json)."""
    for name, key in (("metrics.json", ("meta", "world_size")), ("job.json", ("world_size",))):
        try:
            value = json.loads((run_dir / name).read_text())
            for k in key:
                value = value[k]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


def expected_digests(table: Table, config: Path, weights: Path | None, seed: int, world: int,
                     engine: str) -> Digests:
    """The digests ``mocobench transfer`` records for a job of ``table`` run at ``world`` processes."""
    cfg = load_detection_config(config)
    overrides = scaling_overrides(cfg, reference_world_size(table, cfg), world)
    return planned_digests(config, overrides, weights, seed, engine)


def changed_inputs(job: PlannedRun, world: int, engine: str) -> list[str]:
    """Inputs (config, weights, seed, engine) that differ from those the job's folder was run
    with, compared at the world size it ran at; none for a folder without digests (older runs)."""
    stored = read_digests(job.run_dir)
    if stored is None:
        return []
    world = recorded_world_size(job.run_dir) or world
    return changed(stored, expected_digests(job.table, job.config, job.init.weights, job.seed, world, engine))


def expand(tables: Sequence[Table], inits: dict[str, Init], output: Path) -> list[PlannedRun]:
    return [PlannedRun(table, init, seed, output / table.name / init.name / seed_dir(seed),
                table.config_for(init.format))
            for table in tables for init in select_inits(table, inits) for seed in table.seeds_for(init.name)]


def reference_world_size(table: Table, cfg: CfgNode) -> int:
    return table.cfg.REFERENCE_WORLD_SIZE or cfg.SOLVER.REFERENCE_WORLD_SIZE


def scaling_overrides(cfg: CfgNode, reference: int, world_size: int) -> list[str]:
    """``mocobench transfer`` KEY VALUE overrides of ``scaled_schedule`` (STEPS as a tuple literal)."""
    out: list[str] = []
    for key, value in scaled_schedule(cfg, reference, world_size).items():
        out += [key, "(" + "".join(f"{x}," for x in value) + ")" if isinstance(value, tuple) else repr(value)]
    return out
