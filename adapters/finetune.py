"""Masked fine-tuning: train a pruned model a little while its sparsity pattern stays exact.

After ``backward`` the gradients of masked weights are zeroed, and after every optimizer step
the masks are multiplied back into the weights. Both are needed: weight decay (SGD, Adam) and
optimizer state built before the masks (momentum, Adam's moments) move a weight whose own
gradient is zero, so only the re-application after the step keeps the zeros exactly zero.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from layertrim.adapters.training import (
    Timer,
    TrainReport,
    check_loader,
    check_model,
    check_plain_weight,
    check_val,
    make_optimizer,
    run_epochs,
    weight_sparsity,
)
from layertrim.errors import InvalidInputError
from layertrim.validate import check_int


def prune_mask(mod: nn.Module) -> torch.Tensor | None:
    """The ``weight_mask`` buffer of a module in torch.nn.utils.prune's convention (weight =
    weight_orig * weight_mask, rebuilt before each forward), else None."""
    mask = getattr(mod, "weight_mask", None)
    return mask if hasattr(mod, "weight_orig") and isinstance(mask, torch.Tensor) else None


def current_masks(model: nn.Module, layers=None, exclude=None) -> dict[str, torch.Tensor]:
    """The nonzero pattern (boolean, weight-shaped) of each prunable layer's weight."""
    from layertrim.adapters.torch import find_layers

    out = {}
    for la in find_layers(model, include=layers, exclude=exclude):
        mod = la.module
        mask = prune_mask(mod)
        if mask is not None:
            # torch.nn.utils.prune's convention: ``weight`` is rebuilt only in the forward
            # pre-hook, so after a load_state_dict it is stale; the mask buffer is the pattern
            out[la.name] = (mask != 0) & (mod.weight_orig.detach() != 0)
        else:
            out[la.name] = mod.weight.detach() != 0
    return out


def check_masks(model: nn.Module, masks) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """Validate ``masks`` (layer name -> boolean or 0/1 tensor of the weight's shape) and pair
    each with the parameter that training changes: the weight, or ``weight_orig`` where
    torch.nn.utils.prune computes the weight as weight_orig * weight_mask (``finetune`` then
    also writes the mask into ``weight_mask``). Other parametrized weights are refused."""
    if not isinstance(masks, dict) or not masks:
        raise InvalidInputError("masks must be a non-empty dict: layer name -> mask tensor")
    modules = dict(model.named_modules())
    out = {}
    for name, mask in masks.items():
        mod = modules.get(name)
        if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            raise InvalidInputError(f"masks names {name!r}, which is not a layer with a weight "
                                    f"in the model")
        if prune_mask(mod) is not None:
            w = mod.weight_orig  # the parameter; mod.weight is rebuilt before each forward
        else:
            check_plain_weight(name, mod, "masked fine-tuning")
            w = mod.weight
        m = torch.as_tensor(mask)
        if tuple(m.shape) != tuple(w.shape):
            raise InvalidInputError(f"{name}: mask of shape {tuple(m.shape)}, but the weight "
                                    f"has shape {tuple(w.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise InvalidInputError(f"{name}: mask values must be 0/1 or boolean")
            m = m != 0
        out[name] = (w, m.to(w.device))
    return out


def finetune(model: nn.Module, loader, masks: dict | None = None, *, epochs: int = 1,
             lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0,
             momentum: float = 0.9, loss_fn: Callable | None = None, val=None,
             progress: bool = True) -> TrainReport:
    """Fine-tune ``model`` in place while keeping its pruned weights exactly zero.

    Parameters
    ----------
    model : the (pruned) torch module.
    loader : training batches: a DataLoader, a list of (x, y) pairs, or any re-iterable of them.
    masks : layer name -> boolean (or 0/1) tensor of the weight's shape; True keeps a weight.
        Default: the current nonzero pattern of every Linear/Conv layer (what
        ``layertrim.prune_model`` leaves). Layers not named are trained freely.
    epochs : passes over ``loader``.
    lr : learning rate.
    optimizer : "adam", "adamw" or "sgd" (with ``momentum``).
    weight_decay : the optimizer's weight decay.
    momentum : SGD momentum (ignored by Adam/AdamW).
    loss_fn : ``loss_fn(outputs, y)``; default cross-entropy.
    val : validation data, an (X, y) pair of tensors or an iterable of (x, y) batches; its
        accuracy is computed after each epoch (``report.val_accuracy``).
    progress : a tqdm bar over the batches of each epoch (stderr).

    Returns
    -------
    TrainReport : per-epoch loss and validation accuracy, wall time, final sparsity;
        ``details["masked_weights"]`` counts the weights held at zero.
    """
    check_model(model)
    epochs = check_int("epochs", epochs)
    check_loader(loader, epochs)  # before any tensor is touched
    check_val(val)
    pairs = check_masks(model, current_masks(model) if masks is None else masks)
    opt = make_optimizer(model.parameters(), optimizer, lr, weight_decay, momentum)
    report = TrainReport("finetune")

    def zero_grads(_step: int) -> None:
        for w, m in pairs.values():
            if w.grad is not None:
                w.grad.mul_(m)

    def reapply(_step: int) -> None:
        with torch.no_grad():
            for w, m in pairs.values():
                w.mul_(m)

    modules = dict(model.named_modules())
    with torch.no_grad():  # the prune convention's own mask must be the one kept
        for name, (_, m) in pairs.items():
            buf = prune_mask(modules[name])
            if buf is not None:
                buf.copy_(m.to(buf.dtype))
    with Timer() as t:
        reapply(0)  # a mask that is not yet the weight's zero pattern takes effect now
        run_epochs(model, loader, opt, epochs=epochs, loss_fn=loss_fn or F.cross_entropy,
                   desc="fine-tune", progress=progress, report=report, val=val,
                   before_step=zero_grads, after_step=reapply)
    report.wall_time = t.seconds
    report.sparsity = weight_sparsity(model)
    report.details["masked_weights"] = int(sum(int((~m).sum()) for _, m in pairs.values()))
    return report
