"""Layers as .npz files: read W, X or H, optional b (results go out via layertrim.atomic)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from layertrim.errors import InvalidInputError


def load_layer(path: str | os.PathLike) -> dict[str, np.ndarray | None]:
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
    except Exception as e:  # zipfile, zlib, header parsing, memory: all mean "bad file"
        raise InvalidInputError(f"cannot read {path}: not a valid .npz file ({e})") from None
    if not isinstance(obj, np.lib.npyio.NpzFile):
        raise InvalidInputError(f"cannot read {path}: expected an .npz archive, found one array")
    try:
        with obj:
            data = {k: obj[k] for k in obj.files}
    except Exception as e:  # zlib.error, MemoryError from a forged header, pickled objects, ...
        raise InvalidInputError(f"cannot read {path}: corrupt or non-numeric entry ({e})") from None
    if "W" not in data:
        raise InvalidInputError(f"{path}: missing key 'W' (found {sorted(data)})")
    if "X" not in data and "H" not in data:
        raise InvalidInputError(f"{path}: missing key 'X' or 'H' (found {sorted(data)})")
    return {k: data.get(k) for k in ("W", "X", "H", "b")}
