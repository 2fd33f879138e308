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


__all__ = [
    "Gram",
    "InvalidInputError",
    "LayerProblem",
    "LayerResult",
    "Pattern",
    "methods",
    "prune_model",
    "refit",
    "relative_error",
    "solve_layer",
]
