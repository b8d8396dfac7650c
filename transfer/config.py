"""Detection configs: detectron2's YAML format, merged onto detectron2's defaults tree."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from fvcore.common.config import CfgNode

from mocobench.config import load_config, load_defaults

DEFAULTS_FILE = Path(__file__).with_name("defaults.yaml")


@lru_cache(maxsize=1)
def _defaults() -> CfgNode:
    return load_defaults(DEFAULTS_FILE)


def detection_defaults() -> CfgNode:
    """A fresh copy of detectron2's defaults tree (what get_cfg() returns in detectron2)."""
    return _defaults().clone()


def load_detection_config(path: str | os.PathLike | None, overrides: Sequence[str] = ()) -> CfgNode:
    """defaults <- file (with its _BASE_ chain) <- KEY VALUE overrides, strictly checked."""
    return load_config(detection_defaults(), path, overrides)
