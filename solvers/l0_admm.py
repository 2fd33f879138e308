"""l0-constrained least squares by ADMM with exact projections (Zhang et al. ECCV 2018;
ALPS, Meng et al. 2024; Boza 2024).

    minimize tr((W - W0) H (W - W0)^T)  s.t.  W = D,  D in S (top-k pattern set)

Scaled ADMM with penalty rho, in the unit-diagonal coordinates of ``l0_scaled``:

    W-step  W (H + rho I) = W0 H + rho (D - U)
    D-step  D = P_S(W + U)               (exact top-k projection, Numba introselect)
    U-step  U = U + W - D

H = Q diag(lam) Q^T is eigendecomposed once (O(d^3)); in the eigenbasis the W-step is a
diagonal scaling, so each iteration costs two m x d x d products (float32 by default),
D Q and W = Wq Q^T, and a change of rho costs nothing extra. rho grows geometrically, faster
while the support still changes a lot (ALPS' rule of thumb), so the iterates are driven onto a
support; the run stops when the support has been stable for ``patience`` iterations and
||W - D|| is small. The
exact refit on the final support finishes the job.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg

from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_positive
from layertrim.solvers.l0_scaled import ScaledLS, StopRule, finish, support_change
from layertrim.solvers.registry import register
from layertrim.validate import check_bool


def rho_factor(changed: int, nnz: int) -> float:
    """Growth of rho per iteration: fast while the support churns, slower as it settles."""
    if changed > 0.1 * nnz:
        return 1.3
    if changed > 0.005 * nnz:
        return 1.2
    return 1.1


class EigenBasis:
    """H = Q diag(lam) Q^T, computed once; the W-step is diagonal in this basis."""

    def __init__(self, sc: ScaledLS, dtype):
        # in float32 the eigendecomposition takes ~60% of the float64 time; its ~1e-6 accuracy
        # is far below what the iterations resolve, and the refit is float64 regardless
        lam, Q = scipy.linalg.eigh(sc.H.astype(dtype), driver="evd")
        self.lam = np.maximum(lam, 0.0).astype(dtype)
        self.Q = Q.astype(dtype, copy=False)
        self.W0q = sc.W0.astype(dtype) @ self.Q

    def to_basis(self, A: np.ndarray) -> np.ndarray:
        return A @ self.Q

    def from_basis(self, Aq: np.ndarray) -> np.ndarray:
        return Aq @ self.Q.T

    def w_step(self, Vq: np.ndarray, rho: float) -> np.ndarray:
        """argmin_W f(W) + rho ||W - V||^2, in the basis: (lam W0q + rho Vq) / (lam + rho)."""
        return (self.lam * self.W0q + rho * Vq) / (self.lam + rho)

    def objective(self, Dq: np.ndarray) -> float:
        E = (Dq - self.W0q).astype(np.float64)
        return float(np.einsum("ij,ij,j->", E, E, self.lam))


@register("l0-admm", "l0-constrained least squares by ADMM with exact top-k projections")
def solve(
    problem: LayerProblem,
    *,
    rho: float = 0.1,
    max_iter: int = 200,
    patience: int = 3,
    tol: float = 0.05,
    time_budget: float | None = None,
    float32: bool = True,
    refit: bool = True,
) -> LayerResult:
    """Prune a layer by ADMM on the l0-constrained least-squares problem.

    Parameters
    ----------
    rho : initial penalty, relative to the unit-diagonal H (its eigenvalues average 1).
    max_iter : iteration cap.
    patience : stop once the support has been settled (fewer than
        ``l0_scaled.STABLE_FRACTION`` of the kept weights changed) for this many iterations ...
    tol : ... and ||W - D||_F <= tol * ||D||_F (loose by default: the refit sets the values).
    time_budget : seconds for the whole solve, refit included: the iterations stop at
        ``l0_scaled.BUDGET_SPLIT`` of it and the refit is PCG cut off at
        ``l0_scaled.REFIT_END`` of it (the rest is for measuring the error).
    float32 : run the iteration products in float32 (the refit is always float64).
    refit : end with the exact least-squares refit on the final support.

    Returns
    -------
    LayerResult; ``history`` has per-iteration rho, support change, residual and objective.
    """
    t0 = time.perf_counter()
    float32 = check_bool("float32", float32)
    refit = check_bool("refit", refit)
    check_positive("rho", rho)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("patience", patience, integer=True)
    check_positive("tol", tol)
    check_positive("time_budget", time_budget, allow_none=True)
    dtype = np.float32 if float32 else np.float64
    sc = ScaledLS(problem, dtype)
    eb = EigenBasis(sc, dtype)

    # Both U and its image Uq = U Q are kept, so an iteration needs just two products: D Q and
    # W = Wq Q^T, and the objective of D comes for free from D Q.
    D, mask = sc.project(sc.W0)  # warm start: the scale-aware magnitude support
    Dq = eb.to_basis(D)
    U, Uq = np.zeros_like(D), np.zeros_like(Dq)
    history: list[dict] = []
    stop = StopRule(problem.nnz, patience, time_budget, t0)
    status, it = "max_iter", 0
    for it in range(1, max_iter + 1):
        Wq = eb.w_step(Dq - Uq, rho)
        W = eb.from_basis(Wq)
        D, new_mask = sc.project(W + U)
        Dq = eb.to_basis(D)
        R = W - D
        U += R
        Uq += Wq - Dq
        changed = support_change(mask, new_mask)
        mask = new_mask
        res = float(np.linalg.norm(R)) / max(float(np.linalg.norm(D)), 1e-30)
        history.append({"iter": it, "rho": rho, "support_change": changed, "residual": res,
                        "objective": eb.objective(Dq), "time": time.perf_counter() - t0})
        reason = stop.check(changed, res <= tol, history)
        if reason:
            status = reason
            break
        rho *= rho_factor(changed, problem.nnz)

    settings = {"rho": rho, "max_iter": max_iter, "patience": patience, "tol": tol,
                "time_budget": time_budget, "float32": float32}
    return finish(problem, sc.unscale(D), mask, refit=refit, solver="l0-admm", settings=settings,
                  t0=t0, iterations=it, status=status, history=history,
                  deadline=stop.refit_deadline())
