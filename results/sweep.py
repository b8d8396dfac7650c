"""Sweep files (configs/sweeps/*.yaml): the paper's ablations as data.

A sweep names a pretraining config and groups of runs; a group is a grid (mechanism x K x
m x shuffle-BN) and says which report it feeds (the momentum table, Figure 3, Table 3
through a detection table, or a plain table of runs). Expanding a sweep gives each
distinct run once, with its folder name and its KEY VALUE overrides, and validates every
run's config, so a bad K fails before a cluster allocation, not after it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.config import check_keys, config_chain, load_defaults, merge_overrides
from mocobench.resources import config_path

DEFAULTS_FILE = Path(__file__).with_name("sweep_defaults.yaml")
GROUP_FILE = Path(__file__).with_name("sweep_group.yaml")
SWEEPS_DIR = config_path("sweeps")
REPORTS = ("runs", "momentum", "figure3", "table3")
METRICS = ("knn", "lincls")


@dataclass(frozen=True)
class Run:
    """One pretraining run: its folder name under the sweep's output and its overrides."""
    name: str
    mechanism: str
    K: int
    m: float
    shuffle_bn: bool
    overrides: tuple[str, ...]


@dataclass
class Group:
    name: str
    cfg: CfgNode
    runs: list[Run] = field(default_factory=list)


@dataclass(frozen=True)
class Sweep:
    name: str
    path: Path
    cfg: CfgNode
    groups: list[Group]

    @property
    def title(self) -> str:
        return self.cfg.TITLE or self.name

    def relative(self, value: str) -> Path:
        return (self.path.parent / value).resolve()

    @property
    def runs(self) -> list[Run]:
        """Every distinct run, in the order the groups first name them."""
        return list({r.name: r for g in self.groups for r in g.runs}.values())

    def detection_runs(self) -> dict[Path, list[Run]]:
        """Detection table file -> the runs whose inits go through it."""
        out: dict[Path, list[Run]] = {}
        for g in self.groups:
            if g.cfg.DETECTION:
                table = out.setdefault(self.relative(g.cfg.DETECTION), [])
                table += [r for r in g.runs if r not in table]
        return out


@lru_cache(maxsize=1)
def _defaults() -> tuple[CfgNode, CfgNode]:
    return load_defaults(DEFAULTS_FILE), load_defaults(GROUP_FILE)


def resolve_sweep(name: str) -> Path:
    """A sweep by name (stem under configs/sweeps/) or path."""
    path = Path(name)
    if not path.suffix:
        path = SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(SWEEPS_DIR.glob("*.yaml")))
        raise UserError(f"{name}: no such sweep (known: {known})")
    return path


def load_sweep(path: str | os.PathLike) -> Sweep:
    top, group_defaults = _defaults()
    path = Path(path).resolve()
    cfg, groups = top.clone(), {}
    for file, data in config_chain(path):
        for name, entry in (data.pop("GROUPS", None) or {}).items():
            if not isinstance(entry, dict):
                raise UserError(f"{file}: GROUPS.{name} must be a mapping of group keys, got {entry!r}")
            check_keys(entry, group_defaults, str(file), f"GROUPS.{name}.")
            groups[str(name)] = group_defaults.clone()
            groups[str(name)].merge_from_other_cfg(CfgNode(entry))
        check_keys(data, top, str(file))
        cfg.merge_from_other_cfg(CfgNode(data))
    sweep = Sweep(path.stem, path, cfg, [Group(n, g) for n, g in groups.items()])
    _validate(sweep)
    for group in sweep.groups:
        group.runs = expand_group(sweep, group)
    return sweep


def _validate(sweep: Sweep) -> None:
    cfg, where = sweep.cfg, sweep.path
    if not cfg.PRETRAIN.CONFIG or not sweep.relative(cfg.PRETRAIN.CONFIG).is_file():
        raise UserError(f"{where}: PRETRAIN.CONFIG {cfg.PRETRAIN.CONFIG!r} is not a file next to the sweep")
    if cfg.EVAL.METRIC not in METRICS or not cfg.EVAL[cfg.EVAL.METRIC.upper()]:
        raise UserError(f"{where}: EVAL.METRIC must be knn or lincls, with its EVAL config set; got {cfg.EVAL.METRIC!r}")
    if not sweep.groups:
        raise UserError(f"{where}: GROUPS is empty; name at least one group of runs")
    for g in sweep.groups:
        if g.cfg.REPORT not in REPORTS:
            raise UserError(f"{where}: GROUPS.{g.name}.REPORT must be one of {', '.join(REPORTS)}, got {g.cfg.REPORT!r}")
        if (g.cfg.REPORT == "table3") != bool(g.cfg.DETECTION):
            raise UserError(f"{where}: GROUPS.{g.name}: a DETECTION table goes with REPORT table3, and table3 needs one")
        if g.cfg.DETECTION and not sweep.relative(g.cfg.DETECTION).is_file():
            raise UserError(f"{where}: GROUPS.{g.name}.DETECTION {g.cfg.DETECTION} is not a file next to the sweep")


def base_config(sweep: Sweep) -> CfgNode:
    from mocobench.pretrain.config import load_pretrain_config

    return load_pretrain_config(sweep.relative(sweep.cfg.PRETRAIN.CONFIG), list(sweep.cfg.PRETRAIN.OVERRIDES))


def run_config(sweep: Sweep, run: Run) -> CfgNode:
    """The pretraining config of ``run``: the sweep's config and overrides, then the run's."""
    return merge_overrides(base_config(sweep), list(run.overrides), f"{sweep.path}: run {run.name}")


def expand_group(sweep: Sweep, group: Group) -> list[Run]:
    from mocobench.pretrain.config import validate_mechanism

    base = base_config(sweep).MOCO
    g = group.cfg
    runs = []
    for mech, K, m, shuffle in itertools.product(g.MECHANISM or [base.MECHANISM], g.K or [base.K],
                                                 g.M or [base.M], g.SHUFFLE_BN or [base.SHUFFLE_BN]):
        overrides = ["MOCO.MECHANISM", str(mech), "MOCO.K", str(K), "MOCO.M", repr(float(m)),
                     "MOCO.SHUFFLE_BN", str(bool(shuffle))]
        if mech == "end_to_end":
            overrides += ["SOLVER.BATCH_SIZE", str(K)]  # the dictionary is the batch
        extra = [str(x) for x in g.OVERRIDES]
        name = run_name(mech, int(K), float(m), bool(shuffle))
        if extra:  # the same grid point with other overrides is another run
            name += "_" + hashlib.sha256(" ".join(extra).encode()).hexdigest()[:6]
        run = Run(name, str(mech), int(K), float(m), bool(shuffle), tuple(overrides + extra))
        validate_mechanism(run_config(sweep, run), f"{sweep.path}: GROUPS.{group.name}: run {run.name}")
        runs.append(run)
    return runs


def run_name(mechanism: str, K: int, m: float, shuffle_bn: bool) -> str:
    """Folder name from what matters to the mechanism (m only for MoCo; shuffle-BN not for
    the memory bank, which has no key encoder), so one run serves every group naming it."""
    parts = [mechanism, f"K{K}"]
    if mechanism == "moco":
        parts.append(f"m{m:g}")
    if mechanism != "memory_bank":
        parts.append("shuffle" if shuffle_bn else "noshuffle")
    return "_".join(parts)
