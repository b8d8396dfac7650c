"""What determines a detection run's result, as digests: the resolved config (less where the
run is written and which file the weights came from), the seed, the engine and the bytes
of the init weights. ``transfer --resume`` refuses a change, run-all reruns a job whose
digests changed, collate refuses a run that does not belong to its table.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import yaml
from fvcore.common.config import CfgNode

from mocobench import UserError
from mocobench.digests import Digests, changed, file_digest, key_changes, read_digests, text_digest
from mocobench.transfer.config import load_detection_config

RANDOM_INIT = "random-init"
# keys that do not change the numbers: where the run is written, the weights' file name (its
# bytes are digested instead), the seed (its own entry), and the loader processes (data order
# and augmentation are a function of seed and iteration alone)
_NEUTRAL = {"OUTPUT_DIR": "", "SEED": 0, "MODEL.WEIGHTS": "", "DATALOADER.NUM_WORKERS": 0}


def _neutral(cfg: CfgNode) -> CfgNode:
    clean = cfg.clone()
    clean.defrost()
    for key, value in _NEUTRAL.items():
        *parents, leaf = key.split(".")
        node = clean
        for p in parents:
            node = node[p]
        node[leaf] = value
    return clean


def weights_digest(weights: str | os.PathLike | None) -> str:
    if not weights:
        return RANDOM_INIT
    if not Path(weights).is_file():
        raise UserError(f"{weights}: weights file not found (MODEL.WEIGHTS / --weights)")
    return file_digest(weights)


def job_digests(cfg: CfgNode, engine: str) -> Digests:
    return {"config": text_digest(_neutral(cfg).dump()), "seed": int(cfg.SEED), "engine": engine,
            "weights": weights_digest(cfg.MODEL.WEIGHTS)}


def planned_digests(config: Path, overrides: Sequence[str], weights: Path | None, seed: int,
                    engine: str) -> Digests:
    """The digests ``mocobench transfer --config config --weights --seed ... overrides`` records."""
    cfg = load_detection_config(config, list(overrides))
    cfg.MODEL.WEIGHTS, cfg.SEED = str(weights) if weights else "", seed
    return job_digests(cfg, engine)


def config_changes(stored_yaml: Path, cfg: CfgNode) -> list[str]:
    """'KEY: old -> new' for each config key that differs from the run folder's config.yaml."""
    try:
        old = yaml.safe_load(_neutral(load_detection_config(stored_yaml)).dump())
    except (UserError, OSError, yaml.YAMLError):
        return []
    return key_changes(old, yaml.safe_load(_neutral(cfg).dump()))


def refuse_changed_resume(out_dir: Path, cfg: CfgNode, current: Digests) -> None:
    """UserError naming what differs from the run being resumed (a drawn seed, -1, is kept)."""
    stored = read_digests(out_dir)
    if stored is None:
        return
    names = [n for n in changed(stored, current) if not (n == "seed" and current["seed"] < 0)]
    if not names:
        return
    details = []
    for name in names:
        if name == "config":
            details += config_changes(out_dir / "config.yaml", cfg)[:3] or ["config"]
        elif name == "weights":
            details.append(f"weights file content ({cfg.MODEL.WEIGHTS or RANDOM_INIT})")
        else:
            details.append(f"{name}: {stored.get(name)!r} -> {current.get(name)!r}")
    raise UserError(f"{out_dir}: --resume with other inputs than the run was started with "
                    f"({'; '.join(details)}); give another --output-dir for a new run")
