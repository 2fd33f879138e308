"""Pruning filters while training (Roy et al., IJCNN 2020, "Pruning Filters while Training for
Efficiently Optimizing Deep Learning Networks").

The network trains normally; at the end of every ``interval``-th epoch a share of each chosen
layer's filters (Conv2d output channels) or neurons (Linear outputs) is removed, ranked by one
of the paper's three criteria: the L1 norm of the filter's weights, its mean activation
(mean of ReLU(output) over the samples seen since the last pruning event), or at random. The
shares are spread evenly over the pruning events (by default the end of every epoch but the
last, so the last epoch trains the final structure), the last one reaching the exact
target count ``round(fraction * n)`` per layer. Removed filters are masked (weights and bias
held at zero, and the next layer's inputs from them, which a BatchNorm's shift would still
feed) while training goes on, so training sees the network that is kept; at the end the layers
are physically shrunk with ``adapters.torch_structured.shrink_pair`` (filter l, the next
layer's inputs, a BatchNorm in between).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layertrim.adapters.torch_structured import (
    _BN,
    _columns,
    _set,
    check_pair,
    mask_pair,
    shrink_pair,
)
from layertrim.adapters.training import (
    Timer,
    TrainReport,
    check_fraction,
    check_loader,
    check_model,
    check_optimizer,
    check_plain_weight,
    check_val,
    labelled,
    make_optimizer,
    run_epochs,
    weight_sparsity,
)
from layertrim.errors import InvalidInputError
from layertrim.problem import round_half_up
from layertrim.validate import check_int

CRITERIA = ("l1", "activation", "random")


@dataclass
class _Pair:
    first: str
    second: str
    bn: str | None
    module: nn.Module
    alive: torch.Tensor  # bool (n,)
    target: int  # filters to remove in the end
    act_sum: torch.Tensor | None = None
    act_n: int = 0
    second_module: nn.Module | None = None
    dead_cols: torch.Tensor | None = None  # layer l+1's inputs from the removed filters


def pairs_of(model: nn.Module, layers=None) -> list[tuple[str, str, str | None]]:
    """(layer l, layer l+1, BatchNorm between or None) for each layer to prune, in order.

    ``layers``: names of Linear/Conv2d modules; default every Conv2d if the model has any,
    else every Linear but the last. Layer l+1 is the next Linear/Conv2d in registration order
    (the model must be a chain, e.g. an ``nn.Sequential``)."""
    order = [(n, m) for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.Conv2d, *_BN))]
    dense = [n for n, m in order if isinstance(m, (nn.Linear, nn.Conv2d))]
    if layers is None:
        convs = [n for n, m in order if isinstance(m, nn.Conv2d)]
        layers = convs if convs else dense[:-1]
    elif isinstance(layers, str):
        layers = [layers]
    out = []
    if len(set(layers)) != len(layers):
        raise InvalidInputError(f"layers names a layer twice: {list(layers)}")
    for name in layers:
        if name not in dense:
            raise InvalidInputError(f"{name!r} is not a Linear/Conv2d layer of the model; "
                                    f"its layers: {dense}")
        i = dense.index(name)
        if i == len(dense) - 1:
            raise InvalidInputError(f"{name!r} is the last layer: its outputs cannot be pruned")
        second = dense[i + 1]
        names = [n for n, _ in order]
        between = names[names.index(name) + 1:names.index(second)]
        bns = [n for n in between if isinstance(dict(order)[n], _BN)]
        out.append((name, second, bns[0] if bns else None))
    if not out:
        raise InvalidInputError("no layer to prune: the model needs at least two Linear/Conv2d "
                                "layers")
    return out


def _outputs(model: nn.Module, x) -> torch.Tensor:
    """The model's output on one batch, in eval mode (every flag restored), no grad."""
    from layertrim.adapters.torch_calib import eval_mode, run_model

    with torch.no_grad(), eval_mode(model):
        return run_model(model, x).clone()


def _check_shrunk(masked: torch.Tensor, shrunk: torch.Tensor) -> bool:
    """Whether the shrunk network computes what the masked one did (warning where not: the
    model is not the chain pairs_of assumes, e.g. a skip connection adds channels that were
    shrunk apart)."""
    scale = float(masked.abs().max()) or 1.0
    diff = float((masked - shrunk).abs().max()) if masked.shape == shrunk.shape else float("inf")
    tol = 1e-4 if masked.dtype in (torch.float32, torch.float64) else 1e-2
    if diff <= tol * scale:
        return True
    warnings.warn(f"prune_while_training: shrinking changed the outputs by {diff:.3g} (of "
                  f"{scale:.3g}) on a training batch, so the model is not a chain of its "
                  f"layers (a skip connection, a layer feeding two others?); it is left masked, "
                  f"at its full size", stacklevel=3)
    return False


def _scores(p: _Pair, criterion: str, gen: torch.Generator) -> torch.Tensor:
    w = p.module.weight.detach()
    if criterion == "l1":
        return w.abs().reshape(w.shape[0], -1).sum(1)
    if criterion == "activation":
        if p.act_n == 0 or p.act_sum is None:
            raise InvalidInputError(f"{p.first}: no activations recorded before pruning")
        return p.act_sum / p.act_n
    return torch.rand(w.shape[0], generator=gen)


def prune_while_training(model: nn.Module, loader, *, fraction: float, criterion: str = "l1",
                         layers=None, epochs: int = 4, interval: int = 1,
                         first_prune: int = 1, last_prune: int | None = None,
                         lr: float = 1e-3, optimizer: str = "adam",
                         weight_decay: float = 0.0, momentum: float = 0.9,
                         loss_fn: Callable | None = None, val=None, shrink: bool = True,
                         seed: int = 0, progress: bool = True) -> TrainReport:
    """Train ``model`` in place and remove ``fraction`` of the filters/neurons of each chosen
    layer during training (Roy et al. 2020); shrink the layers at the end.

    Parameters
    ----------
    model : a chain of Linear/Conv2d layers (an ``nn.Sequential``, possibly with BatchNorm,
        activations, pooling, flatten in between).
    loader : training (x, y) batches (a DataLoader or a re-iterable of pairs).
    fraction : share of each layer's filters to remove, in (0, 1); each layer ends with exactly
        ``n - round(fraction * n)`` filters, rounded half up (at least one is always kept).
    criterion : "l1" (smallest L1 norm of the filter's weights), "activation" (smallest mean
        ReLU(output) since the last pruning event) or "random".
    layers : names of the layers whose outputs are pruned; see :func:`pairs_of`.
    epochs : total training epochs.
    interval, first_prune, last_prune : prune at the end of epochs ``first_prune``,
        ``first_prune + interval``, ... and ``last_prune`` (1-based; default ``epochs - 1``,
        so that the last epoch trains the final structure, or ``epochs`` when that is 1); the
        removals are spread evenly over those events, the last one reaching the target.
    lr, optimizer, weight_decay, momentum, loss_fn, val, progress : as in ``finetune``.
    shrink : physically shrink the layers at the end (else leave them masked, same shapes).
    seed : for the random criterion.

    Returns
    -------
    TrainReport : ``details["kept"]`` maps each pruned layer to its kept filter indices (of
        the original numbering), ``details["filters"]`` to (kept, original) counts,
        ``details["events"]`` lists the epochs (1-based) at which filters were removed.
    """
    check_model(model)
    fraction = check_fraction("fraction", fraction)
    if criterion not in CRITERIA:
        raise InvalidInputError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    epochs = check_int("epochs", epochs)
    interval = check_int("interval", interval)
    first_prune = check_int("first_prune", first_prune)
    if last_prune is None:
        last_prune = max(first_prune, epochs - 1)
    last_prune = check_int("last_prune", last_prune)
    if not first_prune <= last_prune <= epochs:
        raise InvalidInputError(f"pruning epochs must satisfy first_prune <= last_prune <= "
                                f"epochs, got {first_prune}, {last_prune}, {epochs}")
    events = list(range(first_prune, last_prune + 1, interval))
    if events[-1] != last_prune:
        events.append(last_prune)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InvalidInputError(f"seed must be an integer, got {seed!r}")
    mods = dict(model.named_modules())
    pairs = []
    found = pairs_of(model, layers)
    for first, second, bn in found:
        check_plain_weight(first, mods[first], "prune_while_training")
        check_plain_weight(second, mods[second], "prune_while_training")
        check_pair(model, first, second, bn)  # refused before training, not after it
    check_loader(loader, epochs)
    check_val(val)
    check_optimizer(optimizer, lr, weight_decay, momentum)
    for first, second, bn in found:
        mod = mods[first]
        n = mod.weight.shape[0]
        target = min(round_half_up(fraction * n), n - 1)
        pairs.append(_Pair(first, second, bn, mod, torch.ones(n, dtype=torch.bool), target,
                           second_module=mods[second]))
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    gen = torch.Generator().manual_seed(seed)
    report = TrainReport("prune-while-training")
    hooks = []
    if criterion == "activation":
        def hook(p):
            def fn(m, _i, out):
                if not torch.is_grad_enabled():  # validation passes (under no_grad) are not
                    return  # training samples; a user-frozen (eval) block's still are
                a = F.relu(out.detach())
                ch = a.dim() - 1 if isinstance(m, nn.Linear) else 1  # a Linear's neurons are
                dims = [d for d in range(a.dim()) if d != ch]  # last, also on (B, T, F)
                s = a.mean(dims) * a.shape[0]
                p.act_sum = s if p.act_sum is None else p.act_sum + s
                p.act_n += a.shape[0]
            return fn
        hooks = [p.module.register_forward_hook(hook(p)) for p in pairs]

    def mask(_step: int = 0) -> None:
        with torch.no_grad():
            for p in pairs:
                dead = ~p.alive
                p.module.weight[dead] = 0
                if p.module.bias is not None:
                    p.module.bias[dead] = 0
                if p.dead_cols is not None:  # a BatchNorm's beta would still feed them: the
                    p.second_module.weight[:, p.dead_cols] = 0  # network mask_pair leaves

    def zero_grads(_step: int) -> None:
        for p in pairs:
            for t in (p.module.weight, p.module.bias):
                if t is not None and t.grad is not None:
                    t.grad[~p.alive] = 0

    def end_epoch(epoch: int) -> None:
        if epoch + 1 in events:
            j = events.index(epoch + 1) + 1
            for p in pairs:
                want = round_half_up(p.target * j / len(events))  # removed after this event
                k = want - int((~p.alive).sum())
                if k > 0:
                    s = _scores(p, criterion, gen).cpu()  # a fresh tensor, on alive's device
                    s[~p.alive] = float("inf")
                    p.alive[torch.argsort(s, stable=True)[:k]] = False
                    dead = torch.nonzero(~p.alive).flatten()
                    p.dead_cols = _columns(p.second_module, p.alive.numel(), dead)[0].to(
                        p.second_module.weight.device)
            mask()
            for p in pairs:  # activations count since the last pruning event
                p.act_sum, p.act_n = None, 0

    try:
        with Timer() as t:
            run_epochs(model, loader, opt, epochs=epochs, loss_fn=loss_fn or F.cross_entropy,
                       desc="prune-while-training", progress=progress, report=report, val=val,
                       before_step=zero_grads, after_step=mask, end_epoch=end_epoch)
            kept = {p.first: torch.nonzero(p.alive).flatten().numpy() for p in pairs}
            for p in pairs:
                mask_pair(model, p.first, p.second, kept[p.first])
            shrunk = False
            if shrink:
                probe = next(iter(labelled(loader)))[0]
                before = _outputs(model, probe)
                names = {n for p in pairs for n in (p.first, p.second, p.bn) if n is not None}
                masked = {n: model.get_submodule(n) for n in names}
                for p in pairs:
                    shrink_pair(model, p.first, p.second, kept[p.first], bn=p.bn)
                shrunk = _check_shrunk(before, _outputs(model, probe))
                if not shrunk:  # the masked modules, which computed the right thing, return
                    for n, mod in masked.items():
                        _set(model, n, mod)
    finally:
        for h in hooks:
            h.remove()
    report.wall_time = t.seconds
    report.sparsity = weight_sparsity(model)
    report.details.update(
        kept={k: v.tolist() for k, v in kept.items()},
        filters={p.first: (int(p.alive.sum()), int(p.alive.numel())) for p in pairs},
        events=events, criterion=criterion, fraction=fraction, shrunk=shrunk)
    return report
