"""Atomic file output: a temp file in the target folder, fsync, then rename over the target.

A reader never sees a half-written file, and a crash leaves any earlier file intact.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from layertrim.errors import InvalidInputError


def _regular_target(path: Path) -> Path:
    """The file an output path names: a symlink's target (the link stays a link), refused
    where it exists and is not a regular file (a device, a FIFO, a socket: replacing
    /dev/null, as root, would replace the device)."""
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file() and not path.is_dir():
        raise InvalidInputError(f"cannot write {path}: it exists and is not a regular file "
                                f"(a device, a pipe or a socket)")
    return path


def _write_atomically(path: Path, mode: str, write: Callable) -> Path:
    path = _regular_target(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private to the writer
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _same_file(a, b) -> bool:
    a, b = Path(a), Path(b)
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_not_input(path: str | os.PathLike, protect=()) -> Path:
    """Refuse an output ``path`` that is (or links to) one of the inputs in ``protect``."""
    path = Path(path)
    for p in protect:
        if _same_file(p, path):
            raise InvalidInputError(f"refusing to overwrite the input file {p} with the output")
    return path


def check_outputs(outputs: dict, protect=()) -> None:
    """Before any work: every output path (``{flag: path}``, None for not asked) can be
    written. Refused: an input in ``protect`` (or a link to one), an existing directory, a
    device, pipe or socket, a folder that does not exist or that this user cannot write, and
    one file named by two outputs."""
    given = [(flag, Path(p)) for flag, p in outputs.items() if p is not None]
    for i, (flag, path) in enumerate(given):
        check_not_input(path, protect)
        if path.is_dir():
            raise InvalidInputError(f"{flag} {path}: is a directory, not a file to write")
        try:
            target = _regular_target(path)
        except InvalidInputError as e:
            raise InvalidInputError(f"{flag} {path}: {e}") from None
        folder = target.parent if str(target.parent) else Path(".")
        if not folder.is_dir():
            raise InvalidInputError(f"{flag} {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise InvalidInputError(f"{flag} {path}: folder {folder} is not writable")
        for other_flag, other in given[:i]:
            if _same_file(other, path):
                raise InvalidInputError(f"{other_flag} and {flag} name the same file {path}")


def atomic_savez(path: str | os.PathLike, *, protect: tuple = (), **arrays) -> Path:
    """Write ``arrays`` as .npz at exactly ``path``; refuse to replace any path in ``protect``."""
    path = check_not_input(path, protect)
    return _write_atomically(path, "wb", lambda f: np.savez(f, **arrays))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text (JSON reports, manifests) atomically, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_atomically(path, "w", lambda f: f.write(text))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes (PNG plots) atomically, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _write_atomically(path, "wb", lambda f: f.write(data))
