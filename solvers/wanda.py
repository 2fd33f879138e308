"""Wanda (Sun, Liu, Bair, Kolter, ICLR 2024): score |W_ij| * ||x_j||_2, no weight update.

The input norms come from the Gram diagonal, ||x_j||_2 = sqrt(H_jj), so X is never needed.
As in the paper, scores are compared within each output row. For the ``layer`` pattern the
global count is spread over the rows: every row keeps floor(k/m) and the k mod m rows whose
next candidate scores highest keep one more; ``comparison="layer"`` ranks the whole matrix.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import project_mask, rows_topk
from layertrim.solvers.registry import register


def _per_row_layer_mask(scores: np.ndarray, k: int) -> np.ndarray:
    m, d = scores.shape
    base, extra = divmod(k, m)
    counts = np.full(m, base)
    if extra:
        # the (base+1)-th best score of each row decides which rows get one more weight
        nxt = -np.partition(-scores, base, axis=1)[:, base]
        counts[np.argpartition(-nxt, extra - 1)[:extra]] += 1
    return rows_topk(scores, counts)


@register("wanda", "keep the largest |W_ij|*||x_j|| within each output row (Sun et al. 2024)")
def solve(problem: LayerProblem, *, comparison: str = "row") -> LayerResult:
    """Wanda mask; ``comparison`` is "row" (the paper's per-output ranking) or "layer"."""
    t0 = time.perf_counter()
    if comparison not in ("row", "layer"):
        raise InvalidInputError(f"comparison must be 'row' or 'layer', got {comparison!r}")
    norms = np.sqrt(np.maximum(np.diag(problem.H)[: problem.d], 0.0))
    scores = np.abs(problem.W0) * norms[None, :]
    pat, k = problem.pattern, problem.nnz
    if pat.kind == "layer" and comparison == "row":
        mask = _per_row_layer_mask(scores, k)
    else:  # global ranking, or a row / N:M pattern that already compares within rows
        mask = project_mask(scores, pat, k)
    # a row or N:M pattern compares within rows whatever was asked: the settings say so
    used = comparison if pat.kind == "layer" else "row"
    return finalize(problem, problem.W0a, mask, solver="wanda",
                    settings={"comparison": used}, t0=t0, iterations=1)
