"""Layers as .npz files: read W, X or H, optional b; write results atomically."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from layertrim.errors import InvalidInputError


def load_layer(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a layer file with keys W and (X or H), optionally b.

    Returns a dict with keys ``W``, ``X``, ``H``, ``b`` (absent entries are None).
    Pickled object arrays are refused: a layer file is plain numeric data.
    """
    path = Path(path)
    try:
        obj = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InvalidInputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InvalidInputError(f"cannot read {path}: it is a directory") from None
    except (OSError, ValueError, EOFError) as e:
        raise InvalidInputError(f"cannot read {path}: not a valid .npz file ({e})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"cannot read {path}: expected an .npz archive, found one array")
    try:
        with obj:
            data = {k: obj[k] for k in obj.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise InvalidInputError(f"cannot read {path}: corrupt or non-numeric entry ({e})") from None
    if "W" not in data:
        raise InvalidInputError(f"{path}: missing key 'W' (found {sorted(data)})")
    if "X" not in data and "H" not in data:
        raise InvalidInputError(f"{path}: missing key 'X' or 'H' (found {sorted(data)})")
    return {k: data.get(k) for k in ("W", "X", "H", "b")}


def atomic_savez(path: str | os.PathLike, *, protect: tuple = (), **arrays) -> Path:
    """Write ``arrays`` to ``path`` as .npz via a temp file in the same folder and a rename.

    A reader never sees a half-written file, and a crash leaves any earlier file intact.
    Refuses to write over any path in ``protect`` (the inputs).
    """
    path = Path(path)
    for p in protect:
        if Path(p).exists() and path.exists() and os.path.samefile(p, path):
            raise InvalidInputError(f"refusing to overwrite the input file {p} with the output")
        if Path(p).resolve() == path.resolve():
            raise InvalidInputError(f"refusing to overwrite the input file {p} with the output")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
