"""Fingerprints of a torch model and of its calibration data, for checkpoint manifests: a
resume is refused when either differs from the run that wrote the checkpoint."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    # the raw bytes, for every dtype (numpy has no bfloat16 or float8); reshape: a 0-dim
    # tensor cannot change its element size
    h.update(t.reshape(-1).view(torch.uint8).numpy())


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the architecture (every submodule's name, class and settings, as its
    ``extra_repr`` states them: an activation or a stride changes the Grams while the
    state_dict stays the same; a custom module's plain attributes and its forward's source)
    and every entry of the state_dict (names, dtypes, shapes,
    values): the layers that are not pruned shape the Grams too."""
    h = hashlib.sha256()
    sources: dict[type, str] = {}  # one read of a class's source, however many instances
    for name, mod in model.named_modules():
        cls = type(mod)
        if cls not in sources:
            sources[cls] = _forward_source(cls)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{mod.extra_repr()}|"
                 f"{_plain_attributes(mod)}|{sources[cls]}\n".encode())
    for name, t in model.state_dict().items():
        if isinstance(t, torch.Tensor):
            _update(h, name, t)
    return h.hexdigest()


_PLAIN = (str, int, float, bool, type(None))


def _plain_attributes(mod: nn.Module) -> str:
    """A custom module's own settings that no extra_repr states: its public attributes of
    plain types (``self.act = "tanh"`` changes the Grams; two such models had one
    fingerprint, and a resume mixed their layers)."""
    items = []
    for k, v in sorted(vars(mod).items()):
        if k.startswith("_") or k == "training":
            continue
        if isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(e, _PLAIN)
                                                                  for e in v)):
            items.append(f"{k}={v!r}")
    return ",".join(items)


def _forward_source(cls: type) -> str:
    """A digest of a custom class's forward source (an edited forward is another model);
    empty for torch's own classes and where the source cannot be read."""
    if cls.__module__.startswith("torch."):
        return ""
    import inspect

    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def calibration_fingerprint(calib, **settings) -> str:
    """sha256 over the calibration batches in order (shapes and dtypes included) and the
    settings that change the Grams (row subsampling, its seed). Reads the data once more."""
    from layertrim.adapters.torch import batches

    h = hashlib.sha256(repr(sorted(settings.items())).encode())
    for i, x in enumerate(batches(calib)):
        if isinstance(x, dict):  # keyword inputs: every entry, by name
            for k in sorted(x, key=str):
                v = x[k]
                if isinstance(v, torch.Tensor):
                    _update(h, f"{i}.{k}", v)
                else:
                    h.update(f"{i}.{k}={v!r}".encode())
        else:
            _update(h, str(i), x)
    return h.hexdigest()
