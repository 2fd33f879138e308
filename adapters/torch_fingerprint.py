"""Fingerprints of a torch model and of its calibration data, for checkpoint manifests: a
resume is refused when either differs from the run that wrote the checkpoint."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from layertrim.adapters.torch_calib import Inputs
from layertrim.errors import InvalidInputError


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
    values), the buffers kept out of it and a module's unregistered tensor attributes: the
    layers that are not pruned shape the Grams too."""
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
    persistent = set(model.state_dict())
    for name, t in model.named_buffers():  # non-persistent ones (an input normalisation)
        if name not in persistent:
            _update(h, f"buffer:{name}", t)
    for name, mod in model.named_modules():  # plain tensor attributes, not registered
        for k, v in sorted(vars(mod).items()):
            if isinstance(v, torch.Tensor) and not k.startswith("_"):
                _update(h, f"attr:{name}.{k}", v)
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
        if isinstance(v, _PLAIN) or (isinstance(v, (tuple, list)) and all(
                isinstance(e, _PLAIN) for e in v)):
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
        _update_value(h, str(i), x)
    return h.hexdigest()


def _update_value(h, name: str, v) -> None:
    """A batch's value in full: tensors and arrays by their bytes, dicts (by key), lists and
    tuples entry by entry, an Inputs by its arguments, plain scalars and strings by repr.
    Anything else has no faithful digest (a repr abbreviates or names a memory address) and is
    refused."""
    if isinstance(v, torch.Tensor):
        _update(h, name, v)
    elif isinstance(v, np.ndarray):
        _update(h, name, torch.from_numpy(np.ascontiguousarray(v)))
    elif isinstance(v, Mapping):
        h.update(f"{name}|dict|{len(v)}|".encode())
        for k in sorted(v, key=str):
            _update_value(h, f"{name}.{k}", v[k])
    elif isinstance(v, Inputs):  # positional, then keyword
        h.update(f"{name}|Inputs|".encode())
        _update_value(h, f"{name}.args", v.args)
        _update_value(h, f"{name}.kwargs", v.kwargs)
    elif isinstance(v, (list, tuple)):
        h.update(f"{name}|{type(v).__name__}|{len(v)}|".encode())
        for j, e in enumerate(v):
            _update_value(h, f"{name}[{j}]", e)
    elif v is None or isinstance(v, (bool, int, float, complex, str, bytes)):
        h.update(f"{name}={v!r}".encode())
    else:
        raise InvalidInputError(f"calibration batch entry {name} is a {type(v).__name__}, "
                                f"which a checkpoint cannot fingerprint: give tensors, arrays, "
                                f"numbers or strings")
