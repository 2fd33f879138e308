"""Per-sample calibration inputs for the solvers that need the samples themselves, not only
their Gram (Net-Trim: its constraints are per sample and per neuron).

Each layer (and group) keeps a seeded uniform sample of at most ``max_samples`` input rows
(patches, for a convolution) over the whole calibration set, by priority sampling: every row
draws a random key and the rows with the smallest keys are kept, so memory is
O(max_samples * d) per layer whatever the calibration size, and the result does not depend on
how the data is split into batches. With a dense ``reference`` the same rows are kept from
both networks, paired, as the cascade rule needs.

Whether a layer feeds a ReLU is read off one forward pass: its output tensor must be the very
input of an ``nn.ReLU`` module. A ReLU applied functionally (``F.relu`` in a custom forward) is
not seen, and the layer is then treated as linear, which is always a valid, if less sparse,
Net-Trim program.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from layertrim.adapters.torch import TorchLayer, calibrate, eval_mode
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
    gens = {(la.name, g): torch.Generator().manual_seed(
                int(np.random.SeedSequence([seed, i, g]).generate_state(1)[0]))
            for i, la in enumerate(layers) for g in range(la.groups)}

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


def relu_layers(model: nn.Module, layers: Sequence[TorchLayer], x: torch.Tensor) -> set[str]:
    """The names of the layers whose output goes straight into an ``nn.ReLU`` module, read off
    one forward pass of the batch ``x``."""
    outputs: dict[str, torch.Tensor] = {}  # held until the pass ends, so no id is reused
    fed: set[str] = set()

    def relu_hook(_mod, inputs, _out):
        for name, out in outputs.items():
            if inputs[0] is out:
                fed.add(name)

    handles = [mod.register_forward_hook(relu_hook) for mod in model.modules()
               if isinstance(mod, nn.ReLU)]
    handles += [la.module.register_forward_hook(
        lambda _m, _i, out, name=la.name: outputs.__setitem__(name, out)) for la in layers]
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return fed
