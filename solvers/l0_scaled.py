"""The least-squares l0 problem in unit-diagonal coordinates, shared by l0-admm, slr and iht.

With s = sqrt(diag H), the substitution W~ = W diag(s) turns
    f(W) = tr((W - W0) H (W - W0)^T)
into the same form with H~ = diag(s)^-1 H diag(s)^-1, whose diagonal is 1. Two things follow:
one step size and one penalty rho fit every layer (the spectrum of H~ averages 1), and the
top-k projection of W~ ranks weights by |w_ij| * ||x_j||, the scale-aware score of Wanda,
instead of raw magnitude. The bias (last augmented column) is never projected.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import project_mask
from layertrim.solvers.refit import refit as exact_refit
from layertrim.solvers.refit_pcg import unit_diagonal_scale


class ScaledLS:
    """H~, W0~ and the projection onto the pattern, for one layer problem."""

    def __init__(self, problem: LayerProblem, dtype=np.float64):
        self.problem = problem
        self.d = problem.d
        self.s = unit_diagonal_scale(problem.H)
        self.H = ((problem.H / self.s[:, None]) / self.s[None, :]).astype(dtype)
        self.W0 = (problem.W0a * self.s).astype(dtype)
        self.dtype = dtype

    def objective(self, W: np.ndarray) -> float:
        E = (W - self.W0).astype(np.float64)
        return float(np.einsum("ij,ij->", E @ self.H, E))

    def project(self, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Closest point of the pattern set to V (bias column free): (D, mask of the weights)."""
        d = self.d
        mask = project_mask(np.abs(V[:, :d]), self.problem.pattern, self.problem.nnz)
        D = V.copy()
        D[:, :d] *= mask
        return D, mask

    def unscale(self, W: np.ndarray) -> np.ndarray:
        return W.astype(np.float64) / self.s


def support_change(old: np.ndarray | None, new: np.ndarray) -> int:
    """Number of weights that entered or left the support."""
    if old is None:
        return int(new.sum())
    return int(np.count_nonzero(old != new))


def finish(
    problem: LayerProblem,
    W: np.ndarray,
    mask: np.ndarray,
    *,
    refit: bool,
    solver: str,
    settings: dict,
    t0: float,
    iterations: int,
    status: str = "solved",
    history: list | None = None,
    deadline: float | None = None,
) -> LayerResult:
    """End an l0 solver: the exact refit on the final support (unless refit=False), then finalize.

    ``W`` is the augmented solution in original coordinates; it warm-starts PCG on large layers.
    With a ``deadline`` (a ``time.perf_counter()`` value, from a time budget) the refit is PCG
    cut off at the deadline: every PCG iteration lowers the error, so any stop is usable.
    """
    settings = dict(settings, refit=bool(refit))
    if refit:
        t_refit = time.perf_counter()
        # PCG, when chosen, is stopped at 1e-8 relative progress with float32 products: the
        # objective then agrees with the direct solve to ~1e-9 (bench/l0.py) at half the cost
        pcg = {"pcg_rtol": 1e-8, "pcg_float32": True}
        if deadline is None:
            r = exact_refit(problem, mask, start=W, **pcg)
        else:
            r = exact_refit(problem, mask, start=W, form="pcg",
                            pcg_time_limit=max(deadline - t_refit, 0.0), **pcg)
        W = np.hstack([r.W, r.bias[:, None]]) if r.bias is not None else r.W
        settings["refit_form"] = r.settings.get("form")
        settings["refit_time"] = time.perf_counter() - t_refit
        if "pcg_iterations" in r.settings:
            settings["refit_pcg_iterations"] = r.settings["pcg_iterations"]
    return finalize(problem, W, mask, solver=solver, settings=settings, t0=t0,
                    iterations=iterations, status=status, history=history)
