"""The single-layer public API."""

from __future__ import annotations

import numpy as np

from layertrim.pattern import Pattern
from layertrim.problem import LayerProblem, error_ratio
from layertrim.result import LayerResult
from layertrim.solvers import available, get_solver, run


def solve_layer(
    W,
    X=None,
    *,
    gram=None,
    bias=None,
    sparsity: float | None = None,
    nnz: int | None = None,
    method: str = "sparsegpt",
    pattern: str | Pattern = "layer",
    activation: str = "linear",
    refit: bool | None = None,
    **options,
) -> LayerResult:
    """Prune one layer.

    Parameters
    ----------
    W : (m, d) array, the trained weights (rows are output neurons).
    X : (n, d) array of calibration inputs, or None when ``gram`` is given.
    gram : :class:`layertrim.Gram` or array H = X^T X (d x d; (d+1) x (d+1) for [X, 1] with a
        bias). Use it when the inputs do not fit in memory.
    bias : (m,) array, optional. Never pruned; solvers that compensate may update it.
    sparsity : fraction of weights to remove, in [0, 1). Or give ``nnz``, the count to keep.
        Net-Trim (whose l1 program sets the sparsity through its radius) searches its gain for
        that fraction and reaches it within 1%, not to the weight.
    method : a registered solver name, see :func:`methods`.
    pattern : ``"layer"`` (unstructured), ``"row"`` (same count per row) or ``"N:M"``.
    activation : the layer's activation kind; the least-squares solvers ignore it.
    refit : end with the exact least-squares refit on the solver's mask. The l0 solvers refit
        by default (``refit=False`` turns it off); for the baselines it is off unless True.
    **options : solver settings (e.g. ``blocksize``, ``damp`` for sparsegpt; ``seed`` for random).

    Returns
    -------
    LayerResult

    Raises
    ------
    InvalidInputError (a ValueError) naming the problem with the inputs.
    """
    entry = get_solver(method)
    problem = LayerProblem.create(
        W, X, gram=gram, bias=bias, sparsity=sparsity, nnz=nnz, pattern=pattern,
        activation=activation, require_target=entry.needs_target,
    )
    return run(problem, method, refit=refit, **options)


def methods() -> dict[str, str]:
    """Registered solvers, name -> one-line description."""
    return available()


def relative_error(W, W0, H) -> float:
    """||X (W - W0)^T||_F^2 / ||X W0^T||_F^2 from the Gram H = X^T X alone."""
    D = np.asarray(W, dtype=np.float64) - W0
    ref = float(np.einsum("ij,ij->", W0 @ H, W0))
    return error_ratio(float(np.einsum("ij,ij->", D @ H, D)), ref)
