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

from results.runs import read_metrics, seed_dir
from results.tables import Init, Table, select_inits

DONE, RESUME, NEW = "done", "resume", "new"
LAST_CHECKPOINT = "last_checkpoint"


@dataclass
class Job:
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


def expand(tables: Sequence[Table], inits: dict[str, Init], output: Path) -> list[Job]:
    return [Job(table, init, seed, output / table.name / init.name / seed_dir(seed),
                table.config_for(init.format))
            for table in tables for init in select_inits(table, inits) for seed in table.seeds]


def reference_world_size(table: Table, cfg: CfgNode) -> int:
    return table.cfg.REFERENCE_WORLD_SIZE or cfg.SOLVER.REFERENCE_WORLD_SIZE


def scaling_overrides(cfg: CfgNode, reference: int, world_size: int) -> list[str]:
    """KEY VALUE overrides running a schedule written for ``reference`` GPUs on ``world_size``.

    detectron2's REFERENCE_WORLD_SIZE rule (linear scaling): images per batch and learning
    rate scale with the number of workers, iteration counts inversely, so each image is
    seen as often with the same per-GPU batch. REFERENCE_WORLD_SIZE is set to the new size
    so an engine that applies the rule itself (detectron2) does not scale a second time.
    """
    if not reference or reference == world_size:
        return []
    s = cfg.SOLVER
    scale = world_size / reference
    if s.IMS_PER_BATCH % reference:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {s.IMS_PER_BATCH} is not divisible by the "
                         f"reference world size {reference}")

    def iters(n: int) -> int:
        return int(round(n / scale))

    steps = "(" + "".join(f"{iters(x)}," for x in s.STEPS) + ")"
    return ["SOLVER.IMS_PER_BATCH", str(int(round(s.IMS_PER_BATCH * scale))),
            "SOLVER.BASE_LR", repr(s.BASE_LR * scale),
            "SOLVER.MAX_ITER", str(iters(s.MAX_ITER)),
            "SOLVER.STEPS", steps,
            "SOLVER.WARMUP_ITERS", str(iters(s.WARMUP_ITERS)),
            "SOLVER.CHECKPOINT_PERIOD", str(iters(s.CHECKPOINT_PERIOD)),
            "TEST.EVAL_PERIOD", str(iters(cfg.TEST.EVAL_PERIOD)),
            "SOLVER.REFERENCE_WORLD_SIZE", str(world_size)]
