"""Atomic writes: a reader (or a resumed job) sees the old file or the new one, never half.

Every checkpoint, metrics file and converted weight file goes through here: write to a
temporary file in the same directory, fsync, then ``os.replace`` over the target. The file
gets the mode any other tool would give it under the user's umask (mkstemp's is 0600, which
would hide results in a shared folder from the group). A process killed mid-write leaves its
hidden ``.<name>.*.tmp``; the next run in that folder removes it (``stale_temp_files``).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Callable, IO, Iterator

from mocobench import UserError

TEMP_SUFFIX = ".tmp"


@functools.cache
def _file_mode() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def ensure_folder(path: str | os.PathLike) -> bool:
    """Create the folder (and its parents) unless it exists; True if this call created it.
    A file in the way is the user's mistake, named in one line."""
    path = Path(path)
    if path.is_dir():
        return False
    for part in [path, *path.parents]:
        if part.exists() and not part.is_dir():
            what = "is a file" if part == path else f"cannot be created: {part} is a file"
            raise UserError(f"{path}: {what}, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot create the folder ({e.strerror})") from None
    return True


def check_file_target(path: str | os.PathLike) -> Path:
    """``path`` as a file to write: refused before any work if it is a folder or under a file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    for part in path.parents:
        if part.exists() and not part.is_dir():
            raise UserError(f"{path}: cannot be written: {part} is a file, not a folder")
    return path


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files ``atomic_open`` left behind when its process was killed mid-write."""
    return sorted(Path(folder).glob(".*.*" + TEMP_SUFFIX))


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    path = check_file_target(path)
    ensure_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as e:  # a read-only or foreign folder: nothing was written, say so in one line
        raise UserError(f"{path}: cannot be written ({e.strerror or e}); any previous version is kept") from None
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full disk or quota: the previous file is intact, say so in one line
            raise UserError(f"{path}: write failed ({e.strerror or e}); any previous version is kept") from None
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

    # serialised in memory first: torch's own writer turns a full disk into an opaque RuntimeError
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))
