"""Per-sample calibration inputs for the solvers that need the samples themselves, not only
their Gram (Net-Trim: its constraints are per sample and per neuron).

Each layer (and group) keeps a seeded uniform sample of at most ``max_samples`` input rows
(patches, for a convolution) over the whole calibration set, by priority sampling: every row
draws a random key and the rows with the smallest keys are kept, so memory is
O(max_samples * d) per layer whatever the calibration size, and the result does not depend on
how the data is split into batches. With a dense ``reference`` the same rows are kept from
both networks, paired, as the cascade rule needs.

Whether a layer feeds a ReLU is read off one forward pass under a torch function mode: every
call that reads the layer's output must be a ReLU (an ``nn.ReLU`` module or ``F.relu``). An
output read by anything else too (a skip connection, the model's return) makes the layer
linear, which is always a valid, if less sparse, Net-Trim program.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from layertrim.adapters.torch import TorchLayer, calibrate, eval_mode
from layertrim.adapters.torch_calib import run_model
from layertrim.adapters.torch_layers import stream_generator
from layertrim.errors import InvalidInputError
from layertrim.validate import check_int


class _Reservoir:
    """The rows with the smallest keys seen so far (and their reference rows)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.keys: torch.Tensor | None = None
        self.rows: torch.Tensor | None = None
        self.ref: torch.Tensor | None = None

    def add(self, keys: torch.Tensor, rows: torch.Tensor, ref: torch.Tensor | None) -> None:
        if self.keys is not None:
            keys = torch.cat([self.keys, keys])
            rows = torch.cat([self.rows, rows])
            ref = None if ref is None else torch.cat([self.ref, ref])
        if keys.shape[0] > self.size:
            keep = torch.topk(keys, self.size, largest=False).indices.sort().values
            keys, rows = keys[keep], rows[keep]
            ref = None if ref is None else ref[keep]
        self.keys, self.rows, self.ref = keys, rows, ref


def collect_samples(model: nn.Module, layers: Sequence[TorchLayer], calib, *,
                    max_samples: int = 2048, seed: int = 0,
                    reference: nn.Module | None = None, progress: bool = False
                    ) -> dict[str, list[tuple[np.ndarray, np.ndarray | None]]]:
    """A uniform sample of each layer's input rows over the calibration set.

    Parameters
    ----------
    model, layers, calib : as for :func:`layertrim.adapters.torch.collect_grams`.
    max_samples : rows kept per layer and group (a row is a sample for a Linear layer, one
        patch position of one sample for a convolution).
    seed : the sampling seed.
    reference : the dense model; its inputs at the same rows are kept alongside.
    progress : show a progress bar over the batches.

    Returns
    -------
    For each layer name, one ``(X, X_ref)`` pair per group: float64 arrays of shape
    (n, d), ``X_ref`` None without a reference.
    """
    check_int("max_samples", max_samples)
    pools = {la.name: [_Reservoir(max_samples) for _ in range(la.groups)] for la in layers}
    # one key stream per layer and group, so the rows kept do not depend on how the data is
    # split into batches
    gens = {(la.name, g): stream_generator(seed, la.name, g)
            for la in layers for g in range(la.groups)}

    def on_batch(layer: TorchLayer, x: torch.Tensor, x_ref: torch.Tensor | None) -> None:
        refs = None if x_ref is None else layer.rows(x_ref)
        for g, rows in enumerate(layer.rows(x)):
            keys = torch.rand(rows.shape[0], generator=gens[layer.name, g],
                              dtype=torch.float64)
            r0 = None if refs is None else refs[g]
            pools[layer.name][g].add(keys, rows, r0)

    calibrate(model, layers, calib, on_batch, reference=reference, progress=progress)
    out = {}
    for name, groups in pools.items():
        pairs = []
        for pool in groups:
            X = pool.rows.double().cpu().numpy()
            if not np.all(np.isfinite(X)):
                raise InvalidInputError(f"layer {name}: its calibration inputs contain NaN or Inf")
            pairs.append((X, None if pool.ref is None else pool.ref.double().cpu().numpy()))
        out[name] = pairs
    return out


# calls that read a tensor's metadata, not its values: not a use of the layer's output
_METADATA = {"size", "dim", "numel", "nelement", "ndimension", "__len__", "__get__", "stride",
             "is_floating_point", "is_contiguous", "element_size", "data_ptr", "is_complex"}


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _is_relu(func, args, kwargs) -> tuple[bool, bool]:
    """(whether ``func`` is a ReLU, whether it works in place)."""
    if func in (F.relu, torch.relu, torch.Tensor.relu):
        inplace = func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1
                                                     else False))
        return True, inplace
    if func in (torch.relu_, torch.Tensor.relu_):
        return True, True
    return False, False


class _Consumers(TorchFunctionMode):
    """Records, for each tracked layer output, whether every call that reads its values is a
    ReLU. A call that hands the very tensor back (dropout in eval mode) passes it on; an
    in-place ReLU ends the tracking (what reads the tensor afterwards reads ReLU outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[str, torch.Tensor] = {}  # held until the pass ends: no id is reused
        self.ended: list[torch.Tensor] = []
        self.relu: set[str] = set()
        self.other: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name_of = getattr(func, "__name__", "")
        if name_of in _METADATA or not self.live:
            return out
        used = {id(t) for t in _tensors((args, kwargs))}
        relu, inplace = _is_relu(func, args, kwargs)
        for name, t in list(self.live.items()):
            if id(t) not in used:
                continue
            if relu:
                self.relu.add(name)
                if inplace:
                    self.ended.append(self.live.pop(name))
            elif out is t and not name_of.endswith("_"):
                continue  # handed back unchanged: the next call reads the same values
            else:
                self.other.add(name)
        return out


def relu_layers(model: nn.Module, layers: Sequence[TorchLayer], x: torch.Tensor) -> set[str]:
    """The names of the layers whose output is read by ReLUs only, traced through one forward
    pass of the batch ``x`` (every torch function call, modules and functional ``F.relu``
    alike). An output also read by anything else (a skip connection, a normalisation, the
    model's return) is not: Net-Trim's ReLU program would let the values those readers see
    drift, so such a layer gets the linear program."""
    rec = _Consumers()

    def track(name):
        def hook(_mod, _inputs, out):
            if isinstance(out, torch.Tensor):
                rec.live[name] = out
        return hook

    handles = [la.module.register_forward_hook(track(la.name)) for la in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            with rec:
                y = run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    returned = {id(t) for t in _tensors(y)}
    rec.other.update(n for n, t in rec.live.items() if id(t) in returned)
    return rec.relu - rec.other
