"""Random pruning (seeded): the floor any method must clear."""

from __future__ import annotations

import time

import numpy as np

from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import project_mask
from layertrim.solvers.registry import register
from layertrim.validate import check_seed


@register("random", "keep a uniformly random set of weights (seeded; a floor, not a method)")
def solve(problem: LayerProblem, *, seed: int = 0) -> LayerResult:
    """Keep a random set of ``problem.nnz`` weights under the pattern; ``seed`` fixes it."""
    t0 = time.perf_counter()
    seed = check_seed("seed", seed)
    scores = np.random.default_rng(seed).random(problem.W0.shape)
    mask = project_mask(scores, problem.pattern, problem.nnz)
    return finalize(problem, problem.W0a, mask, solver="random", settings={"seed": seed},
                    t0=t0, iterations=1)
