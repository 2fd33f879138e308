"""First-order (Taylor) sensitivity of neurons and filters, a survey baseline (Vadera & Ameen,
"Methods for Pruning Deep Neural Networks", IEEE Access 2022; Molchanov et al. 2017).

The importance of a group of weights G (a neuron's row, an input's column, a conv filter) is
|sum_{w in G} w * dL/dw|, the first-order change of the loss L when the group is zeroed.

Which loss: given a gradient (``grad``, e.g. of the task loss from the torch adapter's
backward pass) it is used as is. Without one, the layer's reconstruction loss
||X (W - W0)^T||^2 has a zero gradient at the trained weights (every score would be 0), so the
layer's output energy L = 1/2 ||X W^T||_F^2 is used: dL/dW = W H, from the Gram alone, and the
score of input neuron j is |sum_i w_ij (W H)_ij|, its first-order share of the output energy.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.coreset import column_keep, column_status
from layertrim.solvers.registry import register
from layertrim.validate import real_finite_array

AXES = ("inputs", "outputs")


def taylor_scores(W, grad, *, axis: str = "outputs") -> np.ndarray:
    """|sum over the group of w * grad|: per output neuron / filter (rows, any trailing dims)
    with ``axis="outputs"``, per input column of a 2-D W with ``axis="inputs"``."""
    W = real_finite_array("W", W, np.ndim(W)).astype(np.float64)
    G = real_finite_array("grad", grad, np.ndim(grad)).astype(np.float64)
    if G.shape != W.shape:
        raise InvalidInputError(f"grad has shape {G.shape}, expected {W.shape}")
    if axis not in AXES:
        raise InvalidInputError(f"axis must be one of {AXES}, got {axis!r}")
    P = (W * G).reshape(W.shape[0], -1)
    if axis == "outputs":
        return np.abs(P.sum(axis=1))
    if W.ndim != 2:
        raise InvalidInputError("axis='inputs' needs a 2-D weight matrix")
    return np.abs(P.sum(axis=0))


@register("taylor", "structured: keep the input neurons with the largest first-order Taylor "
          "score |sum w dL/dw| (survey baseline, Vadera & Ameen 2022)")
def solve(problem: LayerProblem, *, grad: np.ndarray | None = None) -> LayerResult:
    """Keep round(nnz / m) whole input columns by Taylor score; ``grad`` is dL/dW of the
    layer's weights (default: the output-energy gradient W H, see the module docstring)."""
    t0 = time.perf_counter()
    k = column_keep(problem)
    W = problem.W0
    g = W @ problem.H[: problem.d, : problem.d] if grad is None else grad
    s = taylor_scores(W, g, axis="inputs")
    kept = np.sort(np.argsort(-s, kind="stable")[:k])
    mask = np.zeros(W.shape, dtype=bool)
    mask[:, kept] = True
    return finalize(problem, problem.W0a, mask, solver="taylor",
                    settings={"kept": kept.tolist(), "gradient": "given" if grad is not None
                              else "output energy W H", "target_nnz": problem.nnz},
                    t0=t0, iterations=1, status=column_status(problem, k))
