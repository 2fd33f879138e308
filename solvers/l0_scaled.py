"""The least-squares l0 problem in unit-diagonal coordinates, shared by l0-admm, slr and iht.

With s = sqrt(diag H), the substitution W~ = W diag(s) turns
    f(W) = tr((W - W0) H (W - W0)^T)
into the same form with H~ = diag(s)^-1 H diag(s)^-1, whose diagonal is 1. Two things follow:
one step size and one penalty rho fit every layer (the spectrum of H~ averages 1), and the
top-k projection of W~ ranks weights by |w_ij| * ||x_j||, the scale-aware score of Wanda,
instead of raw magnitude. A bias is eliminated before (``ScaledLS``) and put back after.
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

BUDGET_SPLIT = 0.6  # share of a time budget for the iterations; the refit gets the rest ...
REFIT_END = 0.85  # ... up to this share, leaving time to measure the error of the result
# the support counts as settled when fewer than this share of the kept weights flip (on large
# layers a handful of near-tied weights can trade places for many iterations; the refit on
# the final support makes such flips irrelevant: measured < 1e-4 relative error change)
STABLE_FRACTION = 1e-5


class ScaledLS:
    """H~, W0~ and the projection onto the pattern, for one layer problem.

    A bias is eliminated first: for any W the best bias is b0 - (W - W0) mu (mu the inputs'
    means), which leaves tr((W - W0) Hc (W - W0)^T) with the centred Gram
    Hc = H_ww - s s^T / n. The iterations, the scale and the projection then see the inputs'
    spread rather than their raw size (on inputs with offsets the uncentred form chose
    supports 1.2-1.4x worse), and ``unscale`` puts the bias back. Inputs that carry nothing
    (zero, or constant under a bias) start with weight 0: no iteration moves a weight the
    objective does not see, and the uncentred start kept them (30x the error on a layer with
    two dead inputs)."""

    def __init__(self, problem: LayerProblem, dtype=np.float64):
        self.problem = problem
        d = self.d = problem.d
        H, W0 = problem.H, problem.W0a
        self.mu = None
        if problem.bias is not None:
            n = float(H[d, d])
            self.mu = H[:d, d] / n if n > 0 else np.zeros(d)
            H = H[:d, :d] - np.outer(H[:d, d], self.mu)
            H = (H + H.T) / 2
            W0 = W0[:, :d]
        self.s = unit_diagonal_scale(H)
        self.H = ((H / self.s[:, None]) / self.s[None, :]).astype(dtype)
        W0s = W0 * self.s
        W0s[:, np.diag(H) <= 0] = 0.0
        self.W0 = W0s.astype(dtype)
        self.dtype = dtype

    def project(self, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Closest point of the pattern set to V (bias column free): (D, mask of the weights)."""
        d = self.d
        mask = project_mask(np.abs(V[:, :d]), self.problem.pattern, self.problem.nnz)
        D = V.copy()
        D[:, :d] *= mask
        return D, mask

    def unscale(self, W: np.ndarray) -> np.ndarray:
        """Original coordinates, with the best bias for these weights where there is one."""
        W = W.astype(np.float64) / self.s
        if self.mu is None:
            return W
        p = self.problem
        b = p.bias - (W - p.W0a[:, : self.d]) @ self.mu
        return np.hstack([W, b[:, None]])


class StopRule:
    """When the l0 iterations end: the support has settled (fewer than ``STABLE_FRACTION`` of
    the kept weights flipped) for ``patience`` iterations and the solver's own condition holds
    ("converged"), or one more iteration would pass ``BUDGET_SPLIT`` of the time budget
    ("time_budget"). ``history`` entries carry the elapsed "time" since ``t0``."""

    def __init__(self, nnz: int, patience: int, time_budget: float | None, t0: float):
        self.nnz, self.patience, self.time_budget, self.t0 = nnz, patience, time_budget, t0
        self.stable = 0

    def check(self, changed: int, small_enough: bool, history: list[dict]) -> str | None:
        self.stable = self.stable + 1 if changed <= STABLE_FRACTION * self.nnz else 0
        if self.stable >= self.patience and small_enough:
            return "converged"
        if self.time_budget is not None and self._over(BUDGET_SPLIT * self.time_budget, history):
            return "time_budget"
        return None

    def _over(self, budget: float, history: list[dict]) -> bool:
        """True when one more iteration (timed like the last one) would end past the budget."""
        now = time.perf_counter() - self.t0
        last = history[-1]["time"] - history[-2]["time"] if len(history) >= 2 else 0.0
        return now + last > budget

    def refit_deadline(self) -> float | None:
        """The ``time.perf_counter()`` value the refit must end by (None without a budget)."""
        return None if self.time_budget is None else self.t0 + REFIT_END * self.time_budget


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
