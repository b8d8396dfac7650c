"""Atomic writes: a reader (or a resumed job) sees the old file or the new one, never half.

Every checkpoint, metrics file and converted weight file goes through here: write to a
temporary file in the same directory, fsync, then ``os.replace`` over the target. The file
gets the mode any other tool would give it under the user's umask (mkstemp's is 0600, which
would hide results in a shared folder from the group).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator


@functools.cache
def _file_mode() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[IO], Any], binary: bool = True) -> None:
    with atomic_open(path, "wb" if binary else "w") as f:
        writer(f)


def write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_pickle(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))
