"""Paper tables as data (configs/tables/*.yaml) and the user's inits file.

A table says which detection config each init runs with, for how many seeds, which
metrics are its columns and which published rows sit beside it; the inits file says
which backbones are the rows. Both are validated on load so that a typo fails before a
cluster allocation, not after it.
"""

from __future__ import annotations

import argparse

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.checkpoints import read_checkpoint
from mocobench.config import check_keys, load_config, load_defaults
from mocobench.conventions import INPUT_FORMATS
from mocobench.resources import config_path
from mocobench.results.runs import unknown_metric

DEFAULTS_FILE = Path(__file__).with_name("table_defaults.yaml")
TABLES_DIR = config_path("tables")
FORMATS = INPUT_FORMATS
SCALES = ("paper", "demo")
ENGINES = ("", "torchvision", "detectron2")
RANDOM_ROW = "random"  # the init every lead is measured from (the inits files' name for no weights)


@dataclass(frozen=True)
class Table:
    name: str
    path: Path
    cfg: CfgNode

    @property
    def title(self) -> str:
        return self.cfg.TITLE or self.name

    @property
    def metrics(self) -> list[str]:
        return list(self.cfg.METRICS)

    def trials_for(self, init: str) -> int:
        """Trials of one row: RANDOM_TRIALS for random init where it is more than TRIALS."""
        return max(self.cfg.TRIALS, self.cfg.RANDOM_TRIALS) if init == RANDOM_ROW else self.cfg.TRIALS

    def seeds_for(self, init: str) -> list[int]:
        return list(range(self.trials_for(init)))

    def config_for(self, fmt: str) -> Path:
        """The detection config an init of input format ``fmt`` runs with."""
        rel = self.cfg.CONFIG[fmt]
        if not rel:
            raise UserError(f"{self.path}: CONFIG.{fmt} is empty, but an init has input format {fmt}")
        return (self.path.parent / rel).resolve()

    def config_paths(self) -> list[Path]:
        return [self.config_for(f) for f in FORMATS if self.cfg.CONFIG[f]]


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def load_table(path: str | os.PathLike, trials: int | None = None) -> Table:
    """``trials`` overrides the file's TRIALS (seeds 0..trials-1): fewer for a quick look,
    more where one trial's noise would decide the comparison (the demo's short jobs)."""
    path = Path(path).resolve()
    cfg = load_config(_defaults(), path)
    if trials is not None:
        cfg.TRIALS = trials
    _validate(cfg, path)
    cfg.freeze()
    return Table(path.stem, path, cfg)


def _validate(cfg: CfgNode, path: Path) -> None:
    if cfg.SCALE not in SCALES:
        raise UserError(f"{path}: SCALE must be one of {SCALES}, got {cfg.SCALE!r}")
    if not (cfg.CONFIG.RGB or cfg.CONFIG.BGR):
        raise UserError(f"{path}: CONFIG needs a detection config for RGB or BGR inits")
    if cfg.ENGINE not in ENGINES:
        raise UserError(f"{path}: ENGINE must be one of {ENGINES[1:]} or empty (either), got {cfg.ENGINE!r}")
    if cfg.TRIALS < 1:
        raise UserError(f"{path}: TRIALS must be >= 1, got {cfg.TRIALS}")
    if cfg.RANDOM_TRIALS < 0:
        raise UserError(f"{path}: RANDOM_TRIALS must be >= 0 (0: as TRIALS), got {cfg.RANDOM_TRIALS}")
    if not cfg.METRICS:
        raise UserError(f"{path}: METRICS is empty; name the columns, e.g. [bbox/AP50, bbox/AP]")
    for m in cfg.METRICS:
        if unknown_metric(m):  # a metric no run records would only ever show as missing
            raise UserError(f"{path}: metric {m!r} is {unknown_metric(m)}")
    if cfg.LEAD_METRIC and cfg.LEAD_METRIC not in cfg.METRICS:
        raise UserError(f"{path}: LEAD_METRIC {cfg.LEAD_METRIC!r} is not one of METRICS {list(cfg.METRICS)}")
    if cfg.PAPER.FILE and len(cfg.PAPER.COLUMNS) != len(cfg.METRICS):
        raise UserError(f"{path}: PAPER.COLUMNS needs one entry per METRICS entry "
                        f"({len(cfg.METRICS)}), got {len(cfg.PAPER.COLUMNS)}")


def tables_for_engine(tables: Sequence[Table], engine: str, named: bool) -> list[Table]:
    """The tables ``engine`` runs. A named table whose configs need the other engine is refused
    before any job is planned; unnamed (every paper table), it is left out, saying so."""
    kept = []
    for table in tables:
        if not table.cfg.ENGINE or table.cfg.ENGINE == engine:
            kept.append(table)
        elif named:
            raise UserError(f"{table.path}: table {table.name} runs on --engine {table.cfg.ENGINE} only "
                            f"(its configs need it), not --engine {engine}")
        else:
            print(f"skipped   table {table.name}: runs on --engine {table.cfg.ENGINE} only")
    return kept


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def add_trials_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=positive_int, metavar="N",
                   help="trials (seeds 0..N-1) per init instead of each table's TRIALS")


def table_files(directory: Path = TABLES_DIR) -> list[Path]:
    return sorted(directory.glob("*.yaml"))


def resolve_tables(names: Sequence[str] | None, directory: Path = TABLES_DIR,
                   trials: int | None = None) -> list[Table]:
    """Tables by name (stem under ``directory``) or path; none named: every paper-scale table."""
    if not names:
        tables = [load_table(p, trials) for p in table_files(directory)]
        return [t for t in tables if t.cfg.SCALE == "paper"]
    out = []
    for name in names:
        path = Path(name)
        if not path.suffix:
            path = directory / f"{name}.yaml"
        if not path.is_file():
            known = ", ".join(p.stem for p in table_files(directory))
            raise UserError(f"{name}: no such table (known: {known})")
        out.append(load_table(path, trials))
    return out


# ---- inits -------------------------------------------------------------------------

INIT_KEYS = CfgNode({"weights": "", "format": ""})
RANDOM_INIT_FORMAT = "RGB"  # no weights: normalise like the MoCo configs (ImageNet RGB mean/std)


@dataclass(frozen=True)
class Init:
    name: str
    weights: Path | None  # None: random init
    format: str


def load_inits(path: str | os.PathLike) -> dict[str, Init]:
    """``name: {weights: PATH, format: RGB|BGR}``; weights relative to the file; empty = random."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UserError(f"{path}: inits file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path}: an inits file maps init names to {{weights, format}}")
    inits = {}
    for name, entry in data.items():
        name = str(name)
        if "/" in name or name.startswith("."):
            raise UserError(f"{path}: init name {name!r} cannot be a folder name")
        entry = entry or {}
        if not isinstance(entry, dict):
            raise UserError(f"{path}: init '{name}' must be a mapping {{weights, format}}, got {entry!r}")
        check_keys(entry, INIT_KEYS, f"{path}: init '{name}'")
        weights = Path(os.path.expanduser(str(entry["weights"]))) if entry.get("weights") else None
        if weights is not None and not weights.is_absolute():
            weights = (path.parent / weights).resolve()
        fmt = entry.get("format") or _format_of(weights, path, name)
        if fmt not in FORMATS:
            raise UserError(f"{path}: init '{name}': format must be RGB or BGR, got {fmt!r}")
        inits[name] = Init(name, weights, fmt)
    return inits


def _format_of(weights: Path | None, source: Path, name: str) -> str:
    """The input format recorded in a converted .pkl (docs/DESIGN.md, "Converted weights"), for inits that omit it."""
    if weights is None:
        return RANDOM_INIT_FORMAT
    where = f"{source}: init '{name}'"
    if not weights.is_file():
        raise UserError(f"{where}: weights {weights} not found (needed to read its input format)")
    data = read_checkpoint(weights)  # weights come from elsewhere: never run code from them
    try:
        return data["__mocobench__"]["input_format"]
    except (KeyError, TypeError, IndexError):
        raise UserError(f"{where}: {weights} carries no __mocobench__ input_format; "
                        f"give format: RGB or BGR") from None


def select_inits(table: Table, inits: dict[str, Init]) -> list[Init]:
    names: Iterable[str] = table.cfg.INITS or inits.keys()
    missing = [n for n in names if n not in inits]
    if missing:
        raise UserError(f"{table.path}: INITS {missing} are not in the inits file")
    return [inits[n] for n in names]
