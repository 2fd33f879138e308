"""Iterative hard thresholding with swap local search (CHITA, Benbaki et al. ICML 2023).

    minimize f(W) = tr((W - W0) H (W - W0)^T)  s.t.  W in S

Projected gradient in the unit-diagonal coordinates of ``l0_scaled``:
W+ = P_S(Y - (Y - W0) H / L) with L = lambda_max(H) (the step 1/L of f/2), from the
extrapolated point Y = W + beta (W - W_prev) when ``momentum`` is on (FISTA weights, reset
whenever f goes up, since the projection makes the problem non-convex). One m x d x d product
per iteration: the gradient at Y is a combination of the stored products at W and W_prev.
When the support settles, rounds of swap local search (``swaps.py``) each followed by a short
refit move the support further; the exact refit on the final support ends the run.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse.linalg

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_positive
from layertrim.solvers.l0_scaled import ScaledLS, StopRule, finish, support_change
from layertrim.solvers.refit_pcg import pcg_refit
from layertrim.solvers.registry import register
from layertrim.solvers.swaps import swap_search, transfer_between_rows
from layertrim.validate import check_bool


def lambda_max(H: np.ndarray) -> float:
    """Largest eigenvalue of a PSD matrix (Lanczos), padded slightly so 1/L stays a safe step."""
    if H.shape[0] <= 64:
        return float(np.linalg.eigvalsh(H)[-1]) * 1.001 + 1e-300
    val = scipy.sparse.linalg.eigsh(H, k=1, which="LA", tol=1e-4, return_eigenvectors=False)
    return float(val[0]) * 1.01 + 1e-300


def swap_rounds(sc: ScaledLS, W: np.ndarray, mask: np.ndarray, *, rounds: int, n_cand: int,
                max_swaps: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Alternate swap passes over all rows with a short PCG refit of the values."""
    p = sc.problem
    keep = np.ones(W.shape, dtype=bool)
    keep[:, : sc.d] = mask
    H = sc.H.astype(np.float64)
    W0 = sc.W0.astype(np.float64)
    group = p.pattern.m if p.pattern.kind == "nm" else 0
    total = 0
    W = np.ascontiguousarray(W, dtype=np.float64)
    for _ in range(rounds):
        W, _, _ = pcg_refit(H, W0, keep, W, rtol=1e-6, max_iter=10, float32_products=True)
        G = np.ascontiguousarray((W - W0) @ H)
        moved = int(swap_search(W, W0, G, H, keep, sc.d, group, n_cand, max_swaps, 1e-9).sum())
        if p.pattern.kind == "layer":  # per-row counts are free: let budget move between rows
            moved += transfer_between_rows(W, G, H, keep, sc.d, 1e-9)
        total += moved
        if moved == 0:
            break
    return W, keep[:, : sc.d].copy(), total


@register("iht", "iterative hard thresholding with momentum and swap local search (CHITA)")
def solve(
    problem: LayerProblem,
    *,
    max_iter: int = 300,
    momentum: bool = True,
    patience: int = 5,
    tol: float = 1e-4,
    swap_rounds_max: int = 3,
    swap_candidates: int = 16,
    swaps_per_row: int = 8,
    time_budget: float | None = None,
    float32: bool = True,
    refit: bool = True,
) -> LayerResult:
    """Prune a layer by IHT, then swap local search, then the exact refit.

    Parameters
    ----------
    max_iter : cap on projected-gradient iterations.
    momentum : FISTA extrapolation with restart on increase.
    patience, tol : stop when the support is unchanged for ``patience`` iterations and f
        decreased by less than ``tol`` (relative) over the last one.
    swap_rounds_max : rounds of (short refit, swap pass); 0 disables the local search.
    swap_candidates : shortlist size per side for pricing swaps exactly.
    swaps_per_row : swaps per row and round.
    time_budget : seconds for the whole solve, refit included: the iterations stop at
        ``l0_scaled.BUDGET_SPLIT`` of it and the refit is PCG cut off at
        ``l0_scaled.REFIT_END`` of it (the rest is for measuring the error).
    float32 : run the gradient products in float32 (swaps and the refit stay float64).
    refit : end with the exact least-squares refit on the final support.
    """
    t0 = time.perf_counter()
    momentum = check_bool("momentum", momentum)
    float32 = check_bool("float32", float32)
    refit = check_bool("refit", refit)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("patience", patience, integer=True)
    check_positive("tol", tol)
    check_positive("time_budget", time_budget, allow_none=True)
    check_positive("swap_candidates", swap_candidates, integer=True)
    check_positive("swaps_per_row", swaps_per_row, integer=True)
    if isinstance(swap_rounds_max, bool) or not isinstance(swap_rounds_max, (int, np.integer)) \
            or swap_rounds_max < 0:
        raise InvalidInputError(f"swap_rounds_max must be an integer >= 0, got {swap_rounds_max!r}")
    sc = ScaledLS(problem, np.float32 if float32 else np.float64)
    L = lambda_max(sc.H.astype(np.float64))

    W, mask = sc.project(sc.W0)
    EH = (W - sc.W0) @ sc.H
    f = float(np.einsum("ij,ij->", W - sc.W0, EH, dtype=np.float64))
    W_prev, EH_prev, t_k = W, EH, 1.0
    history: list[dict] = []
    stop = StopRule(problem.nnz, patience, time_budget, t0)
    status, it = "max_iter", 0
    for it in range(1, max_iter + 1):
        beta = 0.0
        if momentum:
            t_next = (1 + np.sqrt(1 + 4 * t_k * t_k)) / 2
            beta, t_k = (t_k - 1) / t_next, t_next
        Y = W + beta * (W - W_prev)
        grad_Y = EH + beta * (EH - EH_prev)  # (Y - W0) H without another product
        W_new, new_mask = sc.project(Y - grad_Y / L)
        EH_new = (W_new - sc.W0) @ sc.H
        f_new = float(np.einsum("ij,ij->", W_new - sc.W0, EH_new, dtype=np.float64))
        if momentum and f_new > f:  # restart: plain step from W
            t_k = 1.0
            W_new, new_mask = sc.project(W - EH / L)
            EH_new = (W_new - sc.W0) @ sc.H
            f_new = float(np.einsum("ij,ij->", W_new - sc.W0, EH_new, dtype=np.float64))
        changed = support_change(mask, new_mask)
        decrease = (f - f_new) / max(f, 1e-300)
        W_prev, EH_prev, W, EH, f, mask = W, EH, W_new, EH_new, f_new, new_mask
        history.append({"iter": it, "objective": f, "support_change": changed,
                        "time": time.perf_counter() - t0})
        reason = stop.check(changed, decrease < tol, history)
        if reason:
            status = reason
            break

    swaps = 0
    if swap_rounds_max > 0 and status != "time_budget":
        W, mask, swaps = swap_rounds(sc, W, mask, rounds=swap_rounds_max,
                                     n_cand=swap_candidates, max_swaps=swaps_per_row)
    settings = {"max_iter": max_iter, "momentum": momentum, "patience": patience, "tol": tol,
                "lipschitz": L, "swaps": swaps, "swap_rounds_max": swap_rounds_max,
                "swap_candidates": swap_candidates, "swaps_per_row": swaps_per_row,
                "time_budget": time_budget, "float32": float32}
    return finish(problem, sc.unscale(W), mask, refit=refit, solver="iht", settings=settings,
                  t0=t0, iterations=it, status=status, history=history,
                  deadline=stop.refit_deadline())
