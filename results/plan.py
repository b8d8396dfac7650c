"""Tables x inits x seeds -> jobs, each with its run folder, state and ``mocobench transfer`` argv.

A job's state comes from its folder alone (finished: a valid metrics.json; interrupted:
a checkpoint to resume from; else new), so run_all can be killed and re-run at any time
and only ever runs what is unfinished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fvcore.common.config import CfgNode

from mocobench.conventions import LAST_CHECKPOINT
from mocobench.transfer.config import scaled_schedule
from mocobench.results.runs import read_metrics, seed_dir
from mocobench.results.tables import Init, Table, select_inits

DONE, RESUME, NEW = "done", "resume", "new"


@dataclass
class PlannedRun:
    table: Table
    init: Init
    seed: int
    run_dir: Path
    config: Path
    overrides: list[str] = field(default_factory=list)  # KEY VALUE pairs from worker scaling

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
        if self.state == RESUME:
            args.append("--resume")
        return args + self.overrides


def expand(tables: Sequence[Table], inits: dict[str, Init], output: Path) -> list[PlannedRun]:
    return [PlannedRun(table, init, seed, output / table.name / init.name / seed_dir(seed),
                table.config_for(init.format))
            for table in tables for init in select_inits(table, inits) for seed in table.seeds]


def reference_world_size(table: Table, cfg: CfgNode) -> int:
    return table.cfg.REFERENCE_WORLD_SIZE or cfg.SOLVER.REFERENCE_WORLD_SIZE


def scaling_overrides(cfg: CfgNode, reference: int, world_size: int) -> list[str]:
    """``mocobench transfer`` KEY VALUE overrides of ``scaled_schedule`` (STEPS as a tuple literal)."""
    out: list[str] = []
    for key, value in scaled_schedule(cfg, reference, world_size).items():
        out += [key, "(" + "".join(f"{x}," for x in value) + ")" if isinstance(value, tuple) else repr(value)]
    return out
