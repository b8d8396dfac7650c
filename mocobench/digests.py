"""Digests of what determines a run's result, recorded in its folder (digests.json).

A folder's numbers are only worth reusing while the inputs that produced them are the same;
a name -> value record lets a resumed or re-planned run tell which input changed, without
keeping a copy of every input. Values are sha256 hex strings of content, or plain values
(a seed, an engine name) where the value itself is short.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Union

from mocobench.atomic import write_json

DIGESTS_FILE = "digests.json"
Digests = dict[str, Union[str, int]]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file's bytes; cached per (path, size, mtime), as weights are large and reused."""
    stat = os.stat(path)
    return _file_digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_digests(folder: str | os.PathLike) -> Digests | None:
    """The folder's recorded digests; None without a readable record (an older run)."""
    try:
        data = json.loads((Path(folder) / DIGESTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_digests(folder: str | os.PathLike, digests: Mapping[str, Union[str, int]]) -> None:
    write_json(Path(folder) / DIGESTS_FILE, dict(digests))


def changed(stored: Mapping, current: Mapping) -> list[str]:
    """Names whose recorded value differs from the current one (names only one side has count)."""
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def flat(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """A nested config mapping as {'A.B.C': value}."""
    out: dict[str, object] = {}
    for k, v in tree.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def key_changes(old: Mapping, new: Mapping) -> list[str]:
    """'KEY: old -> new' for each key of two nested configs whose values differ."""
    a, b = flat(old), flat(new)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
