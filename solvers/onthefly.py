"""Retraining-free on-the-fly thresholds (Ashouri, Abdelrahman, Dos Remedios, "Retraining-free
methods for fast on-the-fly pruning of convolutional neural networks", Neurocomputing 2019).

A weight of layer l is pruned when |w| < tau_l, with tau_l = k_l * std(W_l): a threshold from
the layer's own weight statistics, no retraining and (for the first two rules) no data. As in
the paper, pruning is per weight (unstructured) and the thresholds are multiples of each
layer's standard deviation; the three rules for k_l are:

- ``"shared"``: one multiple k for every layer (the paper's fixed, data-free setting).
- ``"linear"``: k_l moves linearly with depth from ``k_first`` to ``k_last`` (deeper layers of
  the paper's CNNs tolerate more pruning, so the multiple is allowed to grow with depth).
- ``"bisect"``: per layer, the largest k_l (most pruning) whose relative reconstruction error
  ||X (W - W_l)^T||^2 / ||X W_l^T||^2 on the calibration Gram stays within ``error_budget``,
  found by bisection on k. This rule uses calibration data; the paper tunes its thresholds
  against accuracy on a data set, here the per-layer error budget replaces that search.

Where this departs from the paper: the paper's thresholds are tuned per network against
top-1 accuracy; the exact schedules of its variants were not transcribed here, only the
std-multiple form of the threshold, which all three rules share.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem, error_ratio
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.registry import register
from layertrim.validate import real_finite_array

RULES = ("shared", "linear", "bisect")


def _number(name: str, v, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not np.isfinite(v):
        raise InvalidInputError(f"{name} must be a finite number, got {v!r}")
    if v < 0 or (positive and v == 0):
        raise InvalidInputError(f"{name} must be {'>' if positive else '>='} 0, got {v!r}")
    return float(v)


def threshold_mask(W: np.ndarray, multiple: float) -> np.ndarray:
    """Keep |w| >= multiple * std(W) (always at least the largest weight)."""
    W = np.asarray(W, dtype=np.float64)
    mask = np.abs(W) >= multiple * W.std()
    if not mask.any():
        mask.flat[np.argmax(np.abs(W))] = True
    return mask


def masked_rel_error(W: np.ndarray, H: np.ndarray, mask: np.ndarray) -> float:
    """||X (W*mask - W)^T||^2 / ||X W^T||^2 from the Gram H of the layer's inputs."""
    D = np.where(mask, 0.0, W)
    return error_ratio(float(np.einsum("ij,ij->", D @ H, D)),
                       float(np.einsum("ij,ij->", W @ H, W)))


def bisect_multiple(W: np.ndarray, H: np.ndarray, error_budget: float, *,
                    k_max: float = 10.0, iters: int = 40, error=None) -> float:
    """Largest multiple k in [0, k_max] with masked_rel_error(W, H, threshold_mask(W, k)) within
    ``error_budget`` (the error grows with k, so bisection finds the boundary). ``error(mask)``
    replaces masked_rel_error (a layer problem's own relative error, bias included)."""
    err = (lambda mask: masked_rel_error(W, H, mask)) if error is None else error
    lo, hi = 0.0, k_max
    if err(threshold_mask(W, hi)) <= error_budget:
        return hi
    for _ in range(iters):
        mid = (lo + hi) / 2
        if err(threshold_mask(W, mid)) <= error_budget:
            lo = mid
        else:
            hi = mid
    return lo


def onthefly_prune(weights, *, rule: str = "shared", multiple: float = 1.0,
                   k_first: float | None = None, k_last: float | None = None,
                   grams=None, error_budget: float | None = None):
    """Masks for a list of layers from std-multiple thresholds.

    Parameters
    ----------
    weights : list of (m_l, d_l) arrays (conv weights flattened to rows are fine).
    rule : "shared", "linear" or "bisect" (see the module docstring).
    multiple : k of the shared rule.
    k_first, k_last : the multiples of the first and last layers for the linear rule.
    grams : list of (d_l, d_l) Gram matrices of each layer's inputs, for the bisect rule.
    error_budget : per-layer relative reconstruction error allowed by the bisect rule.

    Returns
    -------
    (masks, multiples): lists, one bool mask and one k_l per layer.
    """
    if rule not in RULES:
        raise InvalidInputError(f"rule must be one of {RULES}, got {rule!r}")
    Ws = [real_finite_array(f"weights[{i}]", W, 2).astype(np.float64)
          for i, W in enumerate(weights)]
    if not Ws:
        raise InvalidInputError("weights is empty")
    L = len(Ws)
    if rule == "shared":
        ks = [_number("multiple", multiple)] * L
    elif rule == "linear":
        if k_first is None or k_last is None:
            raise InvalidInputError("the linear rule needs k_first and k_last")
        a, b = _number("k_first", k_first), _number("k_last", k_last)
        ks = [a + (b - a) * (i / (L - 1) if L > 1 else 0.0) for i in range(L)]
    else:
        if grams is None or error_budget is None:
            raise InvalidInputError("the bisect rule needs grams and error_budget")
        budget = _number("error_budget", error_budget, positive=True)
        if len(grams) != L:
            raise InvalidInputError(f"{len(grams)} grams for {L} layers")
        ks = []
        for i, (W, H) in enumerate(zip(Ws, grams, strict=True)):
            H = real_finite_array(f"grams[{i}]", H, 2).astype(np.float64)
            if H.shape != (W.shape[1], W.shape[1]):
                raise InvalidInputError(f"grams[{i}] has shape {H.shape}, expected "
                                        f"({W.shape[1]}, {W.shape[1]})")
            ks.append(bisect_multiple(W, H, budget))
    return [threshold_mask(W, k) for W, k in zip(Ws, ks, strict=True)], ks


@register("onthefly", "threshold |w| at a multiple of the layer's weight std "
          "(Ashouri et al. 2019); multiple, error budget or the nnz target", needs_target=False)
def solve(problem: LayerProblem, *, multiple: float | None = None,
          error_budget: float | None = None) -> LayerResult:
    """One layer: prune |w| < k std(W). k is ``multiple`` when given; else the largest k whose
    relative error on the problem's Gram is within ``error_budget``; else the k that keeps the
    problem's nnz target (its k-th largest |w| over std). The chosen k is in settings."""
    t0 = time.perf_counter()
    W = problem.W0
    sd = float(W.std())
    if problem.pattern.kind != "layer":
        raise InvalidInputError(f"onthefly thresholds the whole layer at one multiple of its "
                                f"std: use pattern='layer', not {problem.pattern}")
    if multiple is not None and error_budget is not None:
        raise InvalidInputError("give multiple or error_budget, not both")
    if (multiple is not None or error_budget is not None) and problem.has_target:
        raise InvalidInputError("give a sparsity target or multiple/error_budget, not both: "
                                "the multiple sets the sparsity (prune_model always gives a "
                                "target, which onthefly meets by its threshold; multiple and "
                                "error_budget are for solve_layer and onthefly_prune)")
    if multiple is not None:
        k = _number("multiple", multiple)
        mask = threshold_mask(W, k)
    elif error_budget is not None:
        def rel(mask):  # the problem's own relative error, with the bias in its denominator
            Wa = problem.W0a.copy()
            Wa[:, : problem.d][~mask] = 0.0
            return problem.rel_error(problem.objective(Wa))

        k = bisect_multiple(W, problem.H[: problem.d, : problem.d],
                            _number("error_budget", error_budget, positive=True), error=rel)
        mask = threshold_mask(W, k)
    elif problem.has_target:
        flat = np.sort(np.abs(W).ravel())[::-1]
        tau = flat[problem.nnz - 1]
        k = tau / sd if sd > 0 else 0.0
        mask = np.zeros(W.shape, dtype=bool)  # exactly nnz: ties go to the lowest index
        mask.flat[np.argsort(-np.abs(W).ravel(), kind="stable")[: problem.nnz]] = True
    else:
        raise InvalidInputError("onthefly needs multiple, error_budget or a sparsity target")
    return finalize(problem, problem.W0a, mask, solver="onthefly",
                    settings={"multiple": float(k), "std": sd, "error_budget": error_budget},
                    t0=t0, iterations=1)
