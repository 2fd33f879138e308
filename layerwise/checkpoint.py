"""Checkpoint and resume of a whole-model run.

A checkpoint directory holds

- ``manifest.json``: the model hash, the calibration-data fingerprint, the solver settings and
  the layer list of the run. A resume refuses a manifest that differs and says which part.
- ``layers/<key>.npz``: one file per finished layer (or group), written atomically (a temp
  file, fsync, rename), so a killed run leaves only whole files.
- ``log.jsonl``: one line per event (a run starts with the layers it skips and submits; a
  layer is saved), appended by the driver. It is the record that no finished layer is solved
  again.

The executor is not part of the settings: a run started on local processes may be resumed on
Ray, and the other way round (deterministic solvers give the same bits).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from pathlib import Path

import numpy as np

from layertrim.atomic import atomic_savez, atomic_write_text
from layertrim.errors import InvalidInputError
from layertrim.result import LayerResult

FORMAT = 2  # 2: the model hash covers the architecture (torch_fingerprint.py)
MANIFEST = "manifest.json"
_SCALARS = ("objective", "rel_error", "sparsity", "nnz", "iterations", "wall_time")


def fingerprint(*parts) -> str:
    """sha256 of numpy arrays, bytes and JSON-able values, in order (shapes and dtypes
    included, so a reshaped or recast array hashes differently)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray):
            a = np.ascontiguousarray(p)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a)
        elif isinstance(p, (bytes, bytearray, memoryview)):
            h.update(bytes(p))
        else:
            h.update(json.dumps(p, sort_keys=True, default=_default).encode())
    return h.hexdigest()


def _default(value):
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return repr(value)


def jsonable(value):
    """Settings as JSON: numbers, strings, lists and dicts as they are, numpy values as Python
    ones, anything else by repr."""
    return json.loads(json.dumps(value, sort_keys=True, default=_default))


def _file_key(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.\-\[\]]", "_", key) or "_"
    return f"{safe}.{hashlib.sha256(key.encode()).hexdigest()[:8]}"  # names may collide


class Checkpoint:
    """One run's checkpoint directory.

    Parameters
    ----------
    directory : where the manifest and the layer files go (created if missing).
    resume : continue the run recorded there. Without it, a directory that already holds
        finished layers is refused (resume it, or remove it), so no work is overwritten; one
        that holds only a manifest (a run that failed before its first layer) is reused.
    """

    def __init__(self, directory, *, resume: bool = False) -> None:
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise InvalidInputError(f"checkpoint must be a directory path, got {directory!r}")
        self.dir = Path(directory)
        self.resume = bool(resume)
        self.layer_dir = self.dir / "layers"
        self.manifest: dict | None = None

    @property
    def has_layers(self) -> bool:
        """Whether any finished layer is saved here."""
        return any(self.layer_dir.glob("*.npz"))

    def open(self, manifest: dict) -> dict[str, LayerResult]:
        """Write (fresh run) or check (resume) the manifest; returns the finished layers by
        key. Refuses an unwritable directory before any work is done."""
        manifest = jsonable({"format": FORMAT, **manifest})
        path = self.dir / MANIFEST
        if self.resume:
            if not path.is_file():
                raise InvalidInputError(f"cannot resume from {self.dir}: no {MANIFEST} there "
                                        f"(not a layertrim checkpoint)")
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise InvalidInputError(f"cannot read {path}: {e}") from None
            self._check_same(old, manifest)
        elif self.has_layers:
            raise InvalidInputError(
                f"{self.dir} already holds a checkpoint: resume it (--resume {self.dir}, "
                f"or resume= in Python), or remove it to start over")
        elif self.dir.is_dir() and not path.is_file() and any(self.dir.iterdir()):
            raise InvalidInputError(f"{self.dir} is a non-empty directory that is not a "
                                    f"layertrim checkpoint: choose another checkpoint directory")
        try:
            self.layer_dir.mkdir(parents=True, exist_ok=True)
            probe = self.dir / f".probe.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise InvalidInputError(f"cannot write the checkpoint directory {self.dir}: "
                                    f"{e.strerror or e}") from None
        if not self.resume:
            atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True))
        self.manifest = manifest
        if not self.resume:
            return {}
        done = {}
        wanted = {entry["key"] for entry in manifest.get("layers", [])}
        for key in wanted:
            f = self.layer_dir / f"{_file_key(key)}.npz"
            if f.is_file():
                done[key] = self._load(f)
        return done

    @staticmethod
    def _check_same(old: dict, new: dict) -> None:
        if old.get("format") != new.get("format"):  # first: the hashes may differ in meaning
            raise InvalidInputError(
                f"cannot resume: the checkpoint was written in format {old.get('format')!r} "
                f"(another layertrim version); this one reads format {new.get('format')!r}")
        what = {"model": "the model (its architecture and weights hash)",
                "calibration": "the calibration data (its fingerprint)",
                "layers": "the layer list"}
        for k, label in what.items():
            if old.get(k) != new.get(k):
                raise InvalidInputError(f"cannot resume: {label} differs from the checkpoint's")
        a, b = old.get("settings", {}), new.get("settings", {})
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            detail = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff)
            raise InvalidInputError(f"cannot resume: the settings differ from the checkpoint's "
                                    f"({detail})")

    def save(self, key: str, result: LayerResult) -> Path:
        """Persist one finished layer atomically, then log it."""
        arrays = {"W": result.W, "mask": result.mask,
                  "meta": np.array(json.dumps(jsonable({
                      "key": key, "solver": result.solver, "status": result.status,
                      "pattern": result.pattern, "settings": result.settings,
                      "certificate": result.certificate,
                      **{k: getattr(result, k) for k in _SCALARS}})))}
        if result.bias is not None:
            arrays["bias"] = result.bias
        path = atomic_savez(self.layer_dir / f"{_file_key(key)}.npz", **arrays)
        self.log("saved", layer=key)
        return path

    def _load(self, path: Path) -> LayerResult:
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                return LayerResult(W=f["W"], mask=f["mask"],
                                   bias=f["bias"] if "bias" in f.files else None,
                                   solver=meta["solver"], settings=meta["settings"],
                                   status=meta["status"], pattern=meta["pattern"],
                                   certificate=meta["certificate"],
                                   **{k: meta[k] for k in _SCALARS})
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise InvalidInputError(f"cannot read the checkpointed layer {path}: "
                                    f"{type(e).__name__}: {e} (delete the file to solve that "
                                    f"layer again)") from None

    def log(self, event: str, **fields) -> None:
        """Append one JSON line to ``log.jsonl`` (flushed and synced)."""
        line = json.dumps({"event": event, "pid": os.getpid(), "time": time.time(), **fields})
        with open(self.dir / "log.jsonl", "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_log(directory) -> list[dict]:
    """The events of a checkpoint's ``log.jsonl``, in order."""
    path = Path(directory) / "log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
