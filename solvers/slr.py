"""l0-constrained least squares by surrogate Lagrangian relaxation (SLR; Gurevin et al. 2023,
"Towards Real-Time Retrain-Free Pruning", after Bragin et al.'s surrogate Lagrangian method).

Same splitting as ``l0_admm`` (W = D, D in S) but a different multiplier rule. With

    L(W, D, Lam) = f(W) + <Lam, W - D> + rho ||W - D||^2,

each iteration does

1. W-step: W_k = argmin_W L(W, D_{k-1}, Lam) (the eigenbasis solve of ``l0_admm``);
2. if the surrogate optimality condition L(W_k, D_{k-1}, Lam) < L(W_{k-1}, D_{k-1}, Lam)
   holds, Lam += s_k (W_k - D_{k-1});
3. D-step: D_k = P_S(W_k + Lam / (2 rho));
4. if L(W_k, D_k, Lam) < L(W_k, D_{k-1}, Lam), Lam += s_k (W_k - D_k);

with the surrogate step size s_k = alpha_k s_{k-1} ||W_{k-1} - D_{k-1}|| / ||W_k - D_{k-1}||,
alpha_k = 1 - 1 / (M k^(1 - 1/k^r)); M = 300, r = 0.1 and s_0 = 0.01 as in the authors' code.
Multiplier steps are therefore small and only taken when the relaxed problem improved,
unlike ADMM's full dual ascent, and rho grows on the same support-driven schedule.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_positive
from layertrim.solvers.l0_admm import EigenBasis, rho_factor
from layertrim.solvers.l0_scaled import ScaledLS, StopRule, finish, support_change
from layertrim.solvers.registry import register
from layertrim.validate import check_bool


def slr_alpha(k: int, M: float, r: float) -> float:
    """alpha_k = 1 - 1 / (M k^(1 - 1/k^r)) of the surrogate step-size rule."""
    return 1.0 - 1.0 / (M * k ** (1.0 - 1.0 / k**r))


def _next_step(s: float, alpha: float, R_old: np.ndarray, R_new: np.ndarray) -> float:
    """s_k = alpha_k s_{k-1} ||R_old|| / ||R_new||, kept unchanged when either norm vanishes
    (as the authors' code does): W = D exactly, e.g. nothing to prune, would blow it up."""
    a, b = float(np.linalg.norm(R_old)), float(np.linalg.norm(R_new))
    if a == 0.0 or b <= 1e-12 * a:
        return s
    return alpha * s * a / b


def _inner(A: np.ndarray, B: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", A, B, dtype=np.float64))


@register("slr", "l0-constrained least squares by surrogate Lagrangian relaxation")
def solve(
    problem: LayerProblem,
    *,
    rho: float = 0.1,
    s0: float = 0.01,
    M: float = 300.0,
    r: float = 0.1,
    max_iter: int = 200,
    patience: int = 3,
    tol: float = 0.05,
    time_budget: float | None = None,
    float32: bool = True,
    refit: bool = True,
) -> LayerResult:
    """Prune a layer by SLR.

    Parameters
    ----------
    rho : initial quadratic penalty (unit-diagonal H); grows as in ``l0-admm``.
    s0, M, r : surrogate step-size rule (defaults of the authors' code); M > 1, 0 < r < 1.
    max_iter, patience, tol, time_budget, float32, refit : as for ``l0-admm``.

    Returns
    -------
    LayerResult; ``history`` records the Lagrangian before and after each multiplier update,
    whether it was accepted, the step size and the objective of D.
    """
    t0 = time.perf_counter()
    float32 = check_bool("float32", float32)
    refit = check_bool("refit", refit)
    for name, val in (("rho", rho), ("s0", s0), ("M", M), ("r", r), ("tol", tol)):
        check_positive(name, val)
    if not (M > 1 and r < 1):  # the step-size rule's convergence conditions (else alpha_k
        raise InvalidInputError(  # leaves (0, 1), or k**r overflows)
            f"the step-size rule needs M > 1 and 0 < r < 1, got M={M!r}, r={r!r}")
    check_positive("max_iter", max_iter, integer=True)
    check_positive("patience", patience, integer=True)
    check_positive("time_budget", time_budget, allow_none=True)
    dtype = np.float32 if float32 else np.float64
    sc = ScaledLS(problem, dtype)
    eb = EigenBasis(sc, dtype)

    def lagrangian(f_w, R, Lam, rho_):
        return f_w + _inner(Lam, R) + rho_ * _inner(R, R)

    D, mask = sc.project(sc.W0)
    Dq = eb.to_basis(D)
    W, Wq = sc.W0.copy(), eb.W0q.copy()
    f_w = 0.0
    Lam, Lamq = np.zeros_like(D), np.zeros_like(Dq)
    s = s0
    history: list[dict] = []
    stop = StopRule(problem.nnz, patience, time_budget, t0)
    status, it = "max_iter", 0
    for it in range(1, max_iter + 1):
        alpha = slr_alpha(it, M, r)
        R_prev = W - D
        L_prev = lagrangian(f_w, R_prev, Lam, rho)
        Wq = eb.w_step(Dq - Lamq / (2 * rho), rho)
        W = eb.from_basis(Wq)
        f_w = eb.objective(Wq)
        R_mid = W - D
        L_mid = lagrangian(f_w, R_mid, Lam, rho)
        accept_w = L_mid < L_prev
        record_w = (L_prev, L_mid)
        if accept_w:
            s = _next_step(s, alpha, R_prev, R_mid)
            Lam += s * R_mid
            Lamq += s * (Wq - Dq)
            L_mid = lagrangian(f_w, R_mid, Lam, rho)  # the D-step compares at the new Lam
        D_new, new_mask = sc.project(W + Lam / (2 * rho))
        R_new = W - D_new
        L_new = lagrangian(f_w, R_new, Lam, rho)
        accept_d = L_new < L_mid
        Dq_new = eb.to_basis(D_new)
        if accept_d:
            s = _next_step(s, alpha, R_mid, R_new)
            Lam += s * R_new
            Lamq += s * (Wq - Dq_new)
        D, Dq = D_new, Dq_new
        changed = support_change(mask, new_mask)
        mask = new_mask
        res = float(np.linalg.norm(R_new)) / max(float(np.linalg.norm(D)), 1e-30)
        history.append({"iter": it, "rho": rho, "step": float(s), "support_change": changed,
                        "residual": res, "objective": eb.objective(Dq),
                        "lagrangian_w": record_w, "accepted_w": bool(accept_w),
                        "lagrangian_d": (L_mid, L_new), "accepted_d": bool(accept_d),
                        "time": time.perf_counter() - t0})
        reason = stop.check(changed, res <= tol, history)
        if reason:
            status = reason
            break
        rho *= rho_factor(changed, problem.nnz)

    settings = {"rho": rho, "s0": s0, "M": M, "r": r, "max_iter": max_iter,
                "patience": patience, "tol": tol, "time_budget": time_budget, "float32": float32}
    return finish(problem, sc.unscale(D), mask, refit=refit, solver="slr", settings=settings,
                  t0=t0, iterations=it, status=status, history=history,
                  deadline=stop.refit_deadline())
