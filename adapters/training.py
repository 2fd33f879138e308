"""Shared pieces of the training-time companions (``finetune``, ``prune_while_training``,
``diff_threshold``): argument checks, the optimizer, the (x, y) batch loop, accuracy, and the
report every one of them returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from layertrim.errors import InvalidInputError
from layertrim.validate import check_real

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class TrainReport:
    """What a training-time run did.

    Attributes
    ----------
    method : "finetune", "prune-while-training" or "diff-threshold".
    epoch_loss : mean training loss of each epoch.
    val_accuracy : validation accuracy after each epoch (empty without ``val``).
    wall_time : seconds, training and the final write-back.
    sparsity : fraction of zero weights over the prunable layers at the end.
    details : method-specific facts (kept filters, learned thresholds, ...).
    """

    method: str
    epoch_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    sparsity: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def check_positive_float(name: str, value, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (>= 0 with ``allow_zero``); strings and bools are refused."""
    return float(check_real(name, value, strict=not allow_zero))


def check_fraction(name: str, value) -> float:
    """A fraction strictly inside (0, 1)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a fraction in (0, 1), got {value!r}") from None
    if not 0.0 < v < 1.0:
        raise InvalidInputError(f"{name} must be a fraction in (0, 1), got {value!r}")
    return v


def check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def check_plain_weight(name: str, module: nn.Module, what: str) -> None:
    """Refuse a layer whose weight is computed (torch.nn.utils.prune's weight_orig *
    weight_mask, or a parametrization): ``what`` changes the weight tensor itself, and a
    computed one is rebuilt before every forward pass."""
    if hasattr(module, "weight_orig") or "weight" in getattr(module, "parametrizations", {}):
        raise InvalidInputError(
            f"layer {name}: its weight is computed (torch.nn.utils.prune's weight_orig * "
            f"weight_mask, or a parametrization), which {what} cannot change: make it a plain "
            f"parameter first (torch.nn.utils.prune.remove, or "
            f"parametrize.remove_parametrizations)")


def _iterator(obj, what: str):
    """iter(obj), or an InvalidInputError "{what}, got <type>"."""
    try:
        return iter(obj)
    except TypeError:
        raise InvalidInputError(f"{what}, got {type(obj).__name__}") from None


def _tensor_pair(val) -> bool:
    """``val`` is an (X, y) pair of tensors (not an iterable of batches)."""
    return (isinstance(val, (tuple, list)) and len(val) == 2
            and isinstance(val[0], torch.Tensor) and isinstance(val[1], torch.Tensor))


def check_loader(loader, epochs: int) -> None:
    """A loader that can be iterated once per epoch: a one-shot iterator (a generator) would
    be empty from the second epoch on, after the model had already been changed. A
    DataLoader is never one-shot and is not probed (iter() would draw from torch's global RNG
    and start its workers)."""
    from torch.utils.data import DataLoader

    if hasattr(loader, "__len__") and len(loader) == 0:  # before a caller changes the model
        raise InvalidInputError("loader holds no batches")
    if isinstance(loader, DataLoader):
        return
    if epochs > 1 and _iterator(loader, "loader must be an iterable of (x, y) batches") is loader:
        raise InvalidInputError(f"loader is a one-shot iterator ({type(loader).__name__}): it "
                                f"would be empty after the first of {epochs} epochs; pass a "
                                f"list of batches or a DataLoader")


def check_val(val) -> None:
    """``val`` as ``accuracy`` reads it: an (X, y) pair of tensors with one label per row, or
    a re-iterable of (x, y) batches; checked before any training."""
    if val is None:
        return
    if _tensor_pair(val):
        class_labels(val[1])
        if val[0].shape[:1] != val[1].shape[:1]:
            raise InvalidInputError(f"val: X has {val[0].shape[0] if val[0].dim() else 0} rows "
                                    f"but y has {val[1].shape[0] if val[1].dim() else 0} "
                                    f"labels")
        return
    if _iterator(val, "val must be an (X, y) pair of tensors or an iterable of (x, y) "
                      "batches") is val:
        raise InvalidInputError("val is a one-shot iterator: it is read after every epoch; "
                                "pass an (X, y) pair or a list of batches")


def check_optimizer(optimizer: str, lr: float, weight_decay: float,
                    momentum: float) -> tuple[float, float, float]:
    """The optimizer settings, checked (before a caller changes the model): (lr,
    weight_decay, momentum) as floats; the momentum is SGD's alone (0.0 for the others)."""
    if optimizer not in OPTIMIZERS:
        raise InvalidInputError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    lr = check_positive_float("lr", lr)
    wd = check_positive_float("weight_decay", weight_decay, allow_zero=True)
    mom = check_positive_float("momentum", momentum, allow_zero=True) \
        if optimizer == "sgd" else 0.0
    return lr, wd, mom


def make_optimizer(params, optimizer: str, lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with ``momentum``) over ``params``."""
    lr, wd, mom = check_optimizer(optimizer, lr, weight_decay, momentum)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=mom, weight_decay=wd)


def labelled(loader) -> Iterable[tuple[Any, torch.Tensor]]:
    """(x, y) batches of a DataLoader, a list of pairs, or any re-iterable of pairs. x is the
    model's input: a tensor, a dict of keyword inputs, or an ``Inputs`` of several inputs
    (``torch_calib.run_model`` calls the model on it)."""
    from layertrim.adapters.torch_calib import Inputs

    for item in _iterator(loader, "loader must be an iterable of (x, y) batches"):
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise InvalidInputError("each batch of loader must be an (x, y) pair")
        x, y = item[0], item[1]
        if not isinstance(x, (torch.Tensor, dict, Inputs)) or not isinstance(y, torch.Tensor):
            raise InvalidInputError("each batch of loader must be an (x, y) pair of tensors "
                                    "(x may also be a dict of keyword inputs or an Inputs)")
        yield x, y


def n_batches(loader) -> int | None:
    return len(loader) if hasattr(loader, "__len__") else None


def class_labels(y: torch.Tensor) -> torch.Tensor:
    """Labels as a vector of class indices: an (N, 1) column is flattened; other shapes are
    refused (compared with argmax(1) they broadcast, and accuracy exceeded 1)."""
    if y.dim() == 2 and y.shape[1] == 1:
        return y[:, 0]
    if y.dim() != 1:
        raise InvalidInputError(f"val: the labels must be a vector of class indices, got "
                                f"shape {tuple(y.shape)}")
    return y


def accuracy(model: nn.Module, val) -> float:
    """Top-1 accuracy of ``model`` on ``val``: an (X, y) pair of tensors or an iterable of
    (x, y) batches (``labelled``). Eval mode, no grad; every submodule's mode is restored."""
    from layertrim.adapters.torch_calib import eval_mode, run_model

    correct = total = 0
    pairs = [tuple(val)] if (_tensor_pair(val) and val[0].shape[:1] == val[1].shape[:1]
                             ) else labelled(val)
    with torch.no_grad(), eval_mode(model):
        for x, y in pairs:
            y = class_labels(y)
            if not isinstance(x, torch.Tensor):  # keyword or several inputs: one call
                correct += int((run_model(model, x).argmax(1) == y).sum())
                total += y.numel()
                continue
            for xb, yb in zip(x.split(2048), y.split(2048), strict=True):
                correct += int((model(xb).argmax(1) == yb).sum())
                total += yb.numel()
    if total == 0:
        raise InvalidInputError("val holds no samples")
    return correct / total


def run_epochs(model: nn.Module, loader, opt: torch.optim.Optimizer, *, epochs: int,
               loss_fn: Callable, desc: str, progress: bool, report: TrainReport, val=None,
               before_forward: Callable[[int], None] | None = None,
               before_step: Callable[[int], None] | None = None,
               after_step: Callable[[int], None] | None = None,
               extra_loss: Callable[[int], torch.Tensor] | None = None,
               end_epoch: Callable[[int], None] | None = None) -> None:
    """The shared loop: for each batch, ``before_forward(step)`` (e.g. a schedule), zero grads,
    loss (+ ``extra_loss(step)``), backward, ``before_step(step)`` (e.g. zero masked grads),
    optimizer step, ``after_step(step)`` (e.g. re-apply masks). ``end_epoch(epoch)`` runs
    after each epoch, before validation.

    Modes: a model handed over in eval mode trains with every submodule in train mode; one
    already in train mode keeps its submodules' own flags (a BatchNorm the user froze with
    ``.eval()`` stays frozen). Every submodule's flag is restored afterwards, also on error.
    The callers run ``check_loader`` and ``check_val`` first, before they change the model."""
    from tqdm.auto import tqdm

    modes = {m: m.training for m in model.modules()}
    try:  # a model in train mode keeps its submodules' own flags at every epoch
        _epochs(model, loader, opt, epochs, loss_fn, desc, progress, report, val,
                before_forward, before_step, after_step, extra_loss, end_epoch, tqdm,
                modes if model.training else None)
    finally:
        for m, flag in modes.items():
            m.training = flag


def _epochs(model, loader, opt, epochs, loss_fn, desc, progress, report, val, before_forward,
            before_step, after_step, extra_loss, end_epoch, tqdm, flags) -> None:
    from layertrim.adapters.torch_calib import run_model

    step = 0
    total = n_batches(loader)
    for epoch in range(epochs):
        model.train()
        for m, flag in (flags or {}).items():  # the user's own eval()'d submodules stay so
            m.training = flag
        losses = []
        bar = tqdm(labelled(loader), total=total, desc=f"{desc} {epoch + 1}/{epochs}",
                   unit="batch", leave=False, disable=not progress)
        for x, y in bar:
            if before_forward is not None:
                before_forward(step)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(run_model(model, x), y)
            full = loss + extra_loss(step) if extra_loss is not None else loss
            full.backward()
            if before_step is not None:
                before_step(step)
            opt.step()
            if after_step is not None:
                after_step(step)
            losses.append(float(loss.detach()))
            step += 1
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if not losses:
            raise InvalidInputError("loader yielded no batches")
        report.epoch_loss.append(float(np.mean(losses)))
        if end_epoch is not None:
            end_epoch(epoch)
        if val is not None:
            report.val_accuracy.append(accuracy(model, val))
            if progress:
                tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: loss "
                           f"{report.epoch_loss[-1]:.4f}, val accuracy "
                           f"{report.val_accuracy[-1]:.4f}")


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over the model's Linear/Conv layers."""
    from layertrim.adapters.torch import find_layers

    ws = [la.module.weight for la in find_layers(model, quiet=True)]
    return float(sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws))


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
