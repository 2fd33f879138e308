"""Physically smaller PyTorch layers from a structured result: remove neurons (Linear outputs)
or filters (Conv2d output channels) of layer l, the matching BatchNorm entries if one sits in
between, and the matching inputs of layer l+1 (a Linear's columns, a Conv2d's input channels,
or a Linear's block of columns per channel after a flattened conv).

The next layer's kept inputs are multiplied by ``scale`` (a coreset's reweighting), or replaced
by an explicit ``W2``/``b2`` (a refit). ``mask_pair`` builds the same network without shrinking
it (dropped inputs zeroed), so the two can be compared output for output.

Used by the structured bench and meant for the training-time issue (pruning while training),
which ends by shrinking layers the same way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from layertrim.errors import InvalidInputError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise InvalidInputError(f"model has no submodule {name!r}") from None


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _n_out(mod: nn.Module) -> int:
    if isinstance(mod, nn.Linear):
        return mod.out_features
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise InvalidInputError("grouped convolutions are not shrunk (groups must be 1)")
        return mod.out_channels
    raise InvalidInputError(f"layer l must be a Linear or Conv2d, got {type(mod).__name__}")


def _columns(mod2: nn.Module, n: int, kept: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Index of layer l+1's inputs for the kept neurons, and inputs per neuron."""
    if isinstance(mod2, nn.Conv2d):
        if mod2.groups != 1:
            raise InvalidInputError("grouped convolutions are not shrunk (groups must be 1)")
        if mod2.in_channels != n:
            raise InvalidInputError(f"layer shapes do not chain: {n} neurons feed a conv with "
                                    f"{mod2.in_channels} input channels")
        return kept, 1
    if isinstance(mod2, nn.Linear):
        if mod2.in_features % n:
            raise InvalidInputError(f"layer shapes do not chain: {n} neurons feed a Linear "
                                    f"with {mod2.in_features} inputs")
        f = mod2.in_features // n  # f > 1: a flattened conv, channel-major
        cols = (kept[:, None] * f + torch.arange(f)[None, :]).reshape(-1)
        return cols, f
    raise InvalidInputError(f"layer l+1 must be a Linear or Conv2d, got {type(mod2).__name__}")


def _kept(kept, n: int) -> torch.Tensor:
    k = np.asarray(kept)
    if k.ndim != 1 or k.size == 0 or not np.issubdtype(k.dtype, np.integer):
        raise InvalidInputError(f"kept must be a non-empty 1-D array of neuron indices "
                                f"(keeping 0 of {n} neurons is not allowed)")
    if k.min() < 0 or k.max() >= n or np.unique(k).size != k.size:
        raise InvalidInputError(f"kept must hold distinct indices in [0, {n})")
    if k.size > n:
        raise InvalidInputError(f"keeping {k.size} neurons but only {n} exist")
    return torch.from_numpy(np.sort(k).astype(np.int64))


def _scale(scale, k: int, ref: torch.Tensor) -> torch.Tensor:
    if scale is None:
        return torch.ones(k, dtype=ref.dtype, device=ref.device)
    s = torch.as_tensor(np.asarray(scale, dtype=np.float64), dtype=ref.dtype, device=ref.device)
    if s.shape != (k,):
        raise InvalidInputError(f"scale has shape {tuple(s.shape)}, expected ({k},)")
    return s


def _new_weight2(mod2, cols, f, s, W2, b2):
    """Layer l+1's weight over the kept inputs (reweighted, or the given refit)."""
    w = mod2.weight.detach()
    if W2 is None:
        w2 = w[:, cols] * (s.repeat_interleave(f) if isinstance(mod2, nn.Linear) else
                           s.view(1, -1, *([1] * (w.dim() - 2))))
    else:
        w2 = torch.as_tensor(np.asarray(W2), dtype=w.dtype, device=w.device)
        want = (w.shape[0], cols.numel(), *w.shape[2:])
        if tuple(w2.shape) != want:
            raise InvalidInputError(f"W2 has shape {tuple(w2.shape)}, expected {want}")
    b = None if mod2.bias is None else mod2.bias.detach().clone()
    if b2 is not None:
        if b is None:
            raise InvalidInputError("b2 given but layer l+1 has no bias")
        b = torch.as_tensor(np.asarray(b2), dtype=w.dtype, device=w.device)
    return w2, b


def shrink_pair(model: nn.Module, first: str, second: str, kept, *, scale=None, W2=None,
                b2=None, bn: str | None = None) -> nn.Module:
    """Replace layers ``first`` (l) and ``second`` (l+1), and BatchNorm ``bn`` between them,
    by smaller ones keeping the neurons/filters ``kept`` of layer l. In place; returns model.

    Parameters
    ----------
    model : the network (its submodules are replaced by name).
    first, second : names of layer l (Linear or Conv2d) and layer l+1 (Linear or Conv2d; a
        Linear after a flattened conv has one block of columns per channel).
    kept : indices of layer l's neurons to keep.
    scale : (k,) multiplier of each kept input of layer l+1 (a coreset's reweighting).
    W2, b2 : layer l+1's new weight over the kept inputs ((out, k*f) for a Linear, (out, k,
        kh, kw) for a conv) and bias, e.g. from a refit; replaces the scaled weight.
    bn : name of a BatchNorm1d/2d applied to layer l's output, sliced alike.
    """
    m1, m2 = _get(model, first), _get(model, second)
    n = _n_out(m1)
    kt = _kept(kept, n)
    cols, f = _columns(m2, n, kt)
    s = _scale(scale, kt.numel(), m2.weight)
    w2, bias2 = _new_weight2(m2, cols, f, s, W2, b2)
    dev = m1.weight.device
    with torch.no_grad():
        if isinstance(m1, nn.Linear):
            new1 = nn.Linear(m1.in_features, kt.numel(), bias=m1.bias is not None)
        else:
            new1 = nn.Conv2d(m1.in_channels, kt.numel(), m1.kernel_size, m1.stride,
                             m1.padding, m1.dilation, 1, m1.bias is not None, m1.padding_mode)
        new1 = new1.to(device=dev, dtype=m1.weight.dtype)
        new1.weight.copy_(m1.weight[kt])
        if m1.bias is not None:
            new1.bias.copy_(m1.bias[kt])
        if isinstance(m2, nn.Linear):
            new2 = nn.Linear(cols.numel(), m2.out_features, bias=bias2 is not None)
        else:
            new2 = nn.Conv2d(kt.numel(), m2.out_channels, m2.kernel_size, m2.stride,
                             m2.padding, m2.dilation, 1, bias2 is not None, m2.padding_mode)
        new2 = new2.to(device=dev, dtype=m2.weight.dtype)
        new2.weight.copy_(w2)
        if bias2 is not None:
            new2.bias.copy_(bias2)
        if bn is not None:
            _set(model, bn, _shrink_bn(_get(model, bn), n, kt, m1.weight))
    _set(model, first, new1.train(m1.training))
    _set(model, second, new2.train(m2.training))
    return model


def check_pair(model: nn.Module, first: str, second: str, bn: str | None = None) -> None:
    """What mask_pair and shrink_pair would refuse for this pair (a grouped convolution,
    shapes that do not chain, a BatchNorm of another size), checked before a caller has
    changed anything."""
    n = _n_out(_get(model, first))
    _columns(_get(model, second), n, torch.arange(n))
    if bn is not None:
        _check_bn(_get(model, bn), n)


def _check_bn(b: nn.Module, n: int) -> None:
    if not isinstance(b, _BN):
        raise InvalidInputError(f"bn must name a BatchNorm1d/2d, got {type(b).__name__}")
    if b.num_features != n:
        raise InvalidInputError(f"BatchNorm has {b.num_features} features for {n} neurons")


def _shrink_bn(b: nn.Module, n: int, kt: torch.Tensor, like: torch.Tensor) -> nn.Module:
    """The BatchNorm on the kept features, on the device and in the dtype of its own state
    (or of ``like``, layer l's weight, when it has none)."""
    _check_bn(b, n)
    new = type(b)(kt.numel(), eps=b.eps, momentum=b.momentum, affine=b.affine,
                  track_running_stats=b.track_running_stats)
    state = b.weight if b.affine else b.running_mean if b.track_running_stats else like
    new = new.to(device=state.device, dtype=state.dtype)
    if b.affine:
        new.weight.copy_(b.weight[kt])
        new.bias.copy_(b.bias[kt])
    if b.track_running_stats:
        new.running_mean.copy_(b.running_mean[kt])
        new.running_var.copy_(b.running_var[kt])
        new.num_batches_tracked.copy_(b.num_batches_tracked)
    return new.train(b.training)


def mask_pair(model: nn.Module, first: str, second: str, kept, *, scale=None, W2=None,
              b2=None) -> nn.Module:
    """The masked equivalent of ``shrink_pair``, in place: same shapes, layer l's dropped
    neurons zeroed (weights and bias) and layer l+1's inputs from them zeroed, the kept ones
    reweighted by ``scale`` or set to ``W2``/``b2``. Returns model."""
    m1, m2 = _get(model, first), _get(model, second)
    n = _n_out(m1)
    kt = _kept(kept, n)
    cols, f = _columns(m2, n, kt)
    s = _scale(scale, kt.numel(), m2.weight)
    w2, bias2 = _new_weight2(m2, cols, f, s, W2, b2)
    drop = torch.ones(n, dtype=torch.bool)
    drop[kt] = False
    with torch.no_grad():
        m1.weight[drop] = 0
        if m1.bias is not None:
            m1.bias[drop] = 0
        full = torch.zeros_like(m2.weight)
        full[:, cols] = w2
        m2.weight.copy_(full)
        if bias2 is not None:
            m2.bias.copy_(bias2)
    return model
