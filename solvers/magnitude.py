"""Magnitude pruning: keep the largest |W_ij|. The yardstick every other solver must beat."""

from __future__ import annotations

import time

import numpy as np

from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import project_mask
from layertrim.solvers.registry import register


@register("magnitude", "keep the largest |W| (per layer, per row or per N:M group)")
def solve(problem: LayerProblem) -> LayerResult:
    """Keep the ``problem.nnz`` largest-magnitude weights under the problem's pattern."""
    t0 = time.perf_counter()
    mask = project_mask(np.abs(problem.W0), problem.pattern, problem.nnz)
    return finalize(problem, problem.W0a, mask, solver="magnitude", settings={}, t0=t0,
                    iterations=1)
