"""layertrim: prune trained neural networks layer by layer, without retraining."""

from layertrim.api import methods, relative_error, solve_layer  # noqa: E402  (after types)
from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.pattern import Pattern
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers import refit  # noqa: E402

__version__ = "0.1.0"


def prune_model(model, calib, **kwargs):
    """Prune a PyTorch model in place; see :func:`layertrim.adapters.torch.prune_model`
    (imported on first use, so ``import layertrim`` does not load torch)."""
    from layertrim.adapters.torch import prune_model as _prune_model

    return _prune_model(model, calib, **kwargs)


def finetune(model, loader, masks=None, **kwargs):
    """Fine-tune a pruned PyTorch model with its masks kept exactly; see
    :func:`layertrim.adapters.finetune.finetune` (torch imported on first use)."""
    from layertrim.adapters.finetune import finetune as _finetune

    return _finetune(model, loader, masks, **kwargs)


def prune_while_training(model, loader, **kwargs):
    """Train and remove filters/neurons during training (Roy et al. 2020); see
    :func:`layertrim.adapters.prune_while_training.prune_while_training`."""
    from layertrim.adapters.prune_while_training import prune_while_training as _pwt

    return _pwt(model, loader, **kwargs)


def diff_threshold(model, loader, **kwargs):
    """Train with learnable per-layer thresholds, then hard-threshold (after Manessi et al.
    2018); see :func:`layertrim.adapters.diff_threshold.diff_threshold`."""
    from layertrim.adapters.diff_threshold import diff_threshold as _diff_threshold

    return _diff_threshold(model, loader, **kwargs)


__all__ = [
    "Gram",
    "InvalidInputError",
    "LayerProblem",
    "LayerResult",
    "Pattern",
    "diff_threshold",
    "finetune",
    "methods",
    "prune_model",
    "prune_while_training",
    "refit",
    "relative_error",
    "solve_layer",
]
