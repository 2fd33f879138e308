"""layertrim: prune trained neural networks layer by layer, without retraining."""

from layertrim.api import methods, relative_error, solve_layer  # noqa: E402  (after types)
from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.pattern import Pattern
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers import refit  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Gram",
    "InvalidInputError",
    "LayerProblem",
    "LayerResult",
    "Pattern",
    "methods",
    "refit",
    "relative_error",
    "solve_layer",
]
