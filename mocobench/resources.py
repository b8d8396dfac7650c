"""Where the suite's shipped files are, the same from a checkout, an editable install and a wheel.

configs/ installs as the package ``mocobench.configs``: its location comes from the import
system, never from a path relative to a source file (which breaks outside a checkout).
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def configs_dir() -> Path:
    """The folder holding ``pretrain/``, ``detection/`` and ``tables/`` configs."""
    return Path(str(files("mocobench.configs")))


def config_path(name: str | Path) -> Path:
    """A shipped config named relative to configs/ (``pretrain/moco_v2_demo.yaml``); an
    absolute path is the user's own file and is kept."""
    path = Path(name)
    return path if path.is_absolute() else configs_dir() / path


def find_config(name: str | os.PathLike) -> Path:
    """A config file the user named: the file itself if it exists, else the shipped one of that
    name (``configs/detection/voc_R_50_C4_24k.yaml`` or ``detection/voc_R_50_C4_24k.yaml``, from any directory)."""
    path = Path(name).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    relative = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) else path
    shipped = configs_dir() / relative
    return shipped if shipped.is_file() else path
