"""The Net-Trim ADMM iteration for one layer's data (the solver around it is nettrim_admm.py).

The program min ||W||_1 s.t. Xa W^T in C (``nettrim_rules.py``) is split with B = W^T as

    minimize ||Q||_1 + I_C(U)   s.t.   U = Xa B  (penalty rho_fit),   Q = B  (penalty rho).

With Xs = Xa / c, c = sqrt(rho / rho_fit), both constraints carry the same rho in scaled form,

    B-step  (Xs^T Xs + I) B = Xs^T (U - L1) + (Q - L2)     one Cholesky, shared by all m
                                                          neurons and all iterations
    U-step  U = Pi_C(alpha Xs B + (1 - alpha) U + L1)      fused Numba kernel, with L1's update
    Q-step  Q = soft(alpha B + (1 - alpha) Q + L2, 1/rho)  fused Numba kernel, with L2's update

and a change of rho that keeps the ratio never needs a new factor. The iterations may run in
float32 and finish in float64 (``to_float64``): the state is carried over, only the factor is
recomputed; in refine mode the float64 iterations keep float32 products, taken on differences
from float64 reference points, so they cost about what float32 ones do. Time spent in the
products, the triangular solves and the kernels is accumulated in ``timing``.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack

from layertrim.solvers.nettrim_kernels import (
    dual_terms,
    pair_sums,
    project_set_and_update,
    shrink_and_update,
    violation_sums,
)
from layertrim.solvers.nettrim_rules import NetTrimTargets, violation_scale

_dgemm = scipy.linalg.blas.get_blas_funcs("gemm", dtype=np.dtype(np.float64))
REFINE_REFRESH = 100  # iterations between float64 reference products in refine mode


class NetTrimADMM:
    """State and iteration of the scaled ADMM above.

    Parameters
    ----------
    Xa : (n, p) inputs (ones column last when the layer has a bias).
    targets : Y, Omega, V and eps of the program.
    d : number of penalised rows of B (the weights; a bias row is fitted but not penalised).
    rho, rho_fit : penalties on Q = B and on U = Xa B.
    alpha : over-relaxation in [1, 2).
    dtype : np.float32 or np.float64 for the iterations.
    """

    def __init__(self, Xa: np.ndarray, targets: NetTrimTargets, d: int, *, rho: float,
                 rho_fit: float, alpha: float = 1.8, dtype=np.float64):
        self.c = float(np.sqrt(rho / rho_fit))
        self.rho, self.alpha, self.d = float(rho), float(alpha), d
        self.Xa64 = np.asfortranarray(Xa, dtype=np.float64)  # restore and dual_bound read it
        self.t = targets
        n, p = Xa.shape
        m = targets.Y.shape[1]
        self.omega = (np.ones((n, m), bool) if targets.omega is None
                      else np.ascontiguousarray(targets.omega))
        self.support = None  # set by start_refit: the Q-step then keeps a fixed support
        self.timing = {"products": 0.0, "solves": 0.0, "kernels": 0.0, "factor": 0.0,
                       "checks": 0.0}
        self.dtype = None
        self.refine = None  # float64 iterations with float32 products (see to_float64)
        self.B = np.zeros((p, m))
        self.Q = np.zeros((p, m))
        self.U = np.zeros((n, m))
        self.L1 = np.zeros((n, m))
        self.L2 = np.zeros((p, m))
        self._set_dtype(dtype)

    def _set_dtype(self, dtype) -> None:
        # Every product and solve goes through scipy's BLAS/LAPACK on column-major arrays:
        # numpy's and scipy's OpenBLAS are separate libraries with separate spinning thread
        # pools, and alternating between them cost several times the work itself on 2 cores.
        t0 = time.perf_counter()
        self.dtype = dtype
        self.refine = None
        self.gemm = scipy.linalg.blas.get_blas_funcs("gemm", dtype=np.dtype(dtype))
        self.potrs = scipy.linalg.lapack.get_lapack_funcs("potrs", dtype=np.dtype(dtype))
        self.X = np.asfortranarray(self.Xa64 / self.c, dtype=dtype)
        G = self.gemm(1.0, self.X, self.X, trans_a=1)
        G[np.diag_indices_from(G)] += 1.0
        self.chol = scipy.linalg.cholesky(G, lower=True, overwrite_a=True)
        self.omega = np.asfortranarray(self.omega)
        YV = self.t.Y if self.t.V is None else np.where(self.omega, self.t.Y, self.t.V)
        self.YV = np.asfortranarray(YV / self.c, dtype=dtype)  # Y on Omega, V off it
        for name in ("B", "Q", "U", "L1", "L2"):
            setattr(self, name, np.asfortranarray(getattr(self, name), dtype=dtype))
        self.U_old, self.Q_old = np.array(self.U, order="F"), np.array(self.Q, order="F")
        self.AB = np.zeros_like(self.U, order="F")
        self.T = np.zeros_like(self.U, order="F")  # U - L1
        self.R = np.zeros_like(self.Q, order="F")  # the B-step's right-hand side; the solve
        self.R_next = np.zeros_like(self.Q, order="F")  # overwrites it, so two buffers swap
        self.timing["factor"] += time.perf_counter() - t0

    def to_float64(self, refine: bool = False) -> None:
        """Carry the state over to float64. With ``refine``, the two products per iteration
        stay in float32 but act on differences from float64 reference points (refreshed every
        REFINE_REFRESH iterations by float64 products): X^T T = X^T T_ref + X32^T (T - T_ref)
        and X B = X B_ref + X32 (B - B_ref). Float32 rounds a product of X with a difference
        relative to that difference, which vanishes as the iterates settle, so the iterations
        reach float64's accuracy at about float32's cost."""
        X32 = self.X if refine and self.dtype == np.float32 else None
        if self.dtype != np.float64:
            self._set_dtype(np.float64)
        if X32 is not None:
            self.refine = {"X32": X32, "sgemm": scipy.linalg.blas.get_blas_funcs(
                "gemm", dtype=np.dtype(np.float32)), "age": None}

    def to_float32(self) -> None:
        if self.dtype != np.float32:
            self._set_dtype(np.float32)

    def warm_start(self, W: np.ndarray) -> None:
        """Start from W (m x p): B = Q = W^T, U = Xs B and zero duals."""
        self.B = np.asfortranarray(W.T, dtype=self.dtype)
        self.Q = np.array(self.B, order="F")
        self.U = self.gemm(1.0, self.X, self.B)
        self.L1[:] = 0
        self.L2[:] = 0

    def iterate(self, k: int, eps) -> None:
        """k ADMM iterations at radius eps (unscaled; a float or an (m,) array)."""
        eps_s = np.atleast_1d(np.asarray(eps, dtype=np.float64) / self.c)
        X, tm, kappa, gemm = self.X, self.timing, 1.0 / self.rho, self.gemm
        # the refit's fit weight in scaled units (the objective is c^2/2 ||U_s - Y_s||^2)
        w_fit = -1.0 if self.support is None else self.c**2 / self.rho
        np.subtract(self.U, self.L1, out=self.T)  # afterwards the kernels write T and R
        np.subtract(self.Q, self.L2, out=self.R)
        for step in range(k):
            t0 = time.perf_counter()
            if self.refine is None:
                self.R = gemm(1.0, X, self.T, 1.0, self.R, trans_a=1, overwrite_c=1)
            else:
                self._refined_xt_t()
            t1 = time.perf_counter()
            B, info = self.potrs(self.chol, self.R, lower=1, overwrite_b=1)
            if info != 0:
                raise RuntimeError(f"potrs failed with info={info}")
            self.B, self.R = B, self.R_next  # B lives in R's memory; the kernel fills the other
            t2 = time.perf_counter()
            if self.refine is None:
                self.AB = gemm(1.0, X, self.B, 0.0, self.AB, overwrite_c=1)
            else:
                self._refined_x_b()
            t3 = time.perf_counter()
            last = step == k - 1  # the residuals after this call need the previous U and Q
            project_set_and_update(self.AB, self.U, self.L1, self.YV, self.omega, eps_s,
                                   self.alpha, self.U_old, self.T, last, w_fit)
            shrink_and_update(self.B, self.Q, self.L2, kappa, self.d, self.alpha, self.Q_old,
                              self.R, last, self.support)
            self.R_next = self.B
            t4 = time.perf_counter()
            tm["products"] += (t1 - t0) + (t3 - t2)
            tm["solves"] += t2 - t1
            tm["kernels"] += t4 - t3

    def _refined_xt_t(self) -> None:
        """R += X^T T in refine mode (R holds Q - L2); refreshes the references when due."""
        ref = self.refine
        if ref["age"] is None or ref["age"] >= REFINE_REFRESH:
            ref["T"] = np.array(self.T, order="F")
            ref["XtT"] = self.gemm(1.0, self.X, ref["T"], trans_a=1)
            ref["B"] = None  # B's reference follows at the next X B
            ref["age"] = 0
            self.R += ref["XtT"]
            return
        ref["age"] += 1
        D = np.subtract(self.T, ref["T"], order="F").astype(np.float32, order="F")
        self.R += ref["XtT"]
        self.R += ref["sgemm"](1.0, ref["X32"], D, trans_a=1)

    def _refined_x_b(self) -> None:
        ref = self.refine
        if ref["B"] is None:
            ref["B"] = np.array(self.B, order="F")
            ref["XB"] = self.gemm(1.0, self.X, ref["B"])
            np.copyto(self.AB, ref["XB"])
            return
        D = np.subtract(self.B, ref["B"], order="F").astype(np.float32, order="F")
        np.add(ref["XB"], ref["sgemm"](1.0, ref["X32"], D), out=self.AB)

    def start_refit(self, mask: np.ndarray) -> None:
        """Switch to the refit program on the support ``mask`` (m x d): minimise
        ||(Xa W^T - Y)_Omega||^2 subject to Xa W^T <= V off Omega and W = 0 off the mask.
        Starts from the current iterate with zero duals."""
        p, m = self.B.shape
        self.support = np.asfortranarray(mask.T[: self.d])
        self.L1[:] = 0
        self.L2[:] = 0

    def residuals(self, abstol: float, reltol: float, dual_reltol: float | None = None) -> dict:
        """Boyd et al. (2011) section 3.3 residuals of the last iteration, with their
        tolerances. The dual tolerance is relative to ||rho L2|| (the l1 subgradient part of
        the dual): Boyd's ||A^T y|| tends to zero here, because B has no cost of its own."""
        t0 = time.perf_counter()
        X, AB, B, U, Q = self.X, self.AB, self.B, self.U, self.Q
        n, m = U.shape
        p = B.shape[0]
        # one pass each (in float64) for ||AB - U||, ||AB|| and ||U||, likewise for B and Q
        du2, ab2, u2 = pair_sums(AB, U)
        dq2, b2, q2 = pair_sums(B, Q)
        r = float(np.sqrt(du2 + dq2))
        dQ = np.asfortranarray(Q - self.Q_old)
        if self.refine is None:
            dz = self.gemm(1.0, X, U - self.U_old, 1.0, dQ, trans_a=1)
        else:  # a product with a difference: float32 is accurate relative to it
            dU = np.subtract(U, self.U_old, order="F").astype(np.float32, order="F")
            dz = dQ + self.refine["sgemm"](1.0, self.refine["X32"], dU, trans_a=1)
        s = self.rho * _norm(dz)
        ax, z = np.sqrt(ab2 + b2), np.sqrt(u2 + q2)
        eps_pri = np.sqrt((n + p) * m) * abstol + reltol * max(ax, z)
        dual_reltol = reltol if dual_reltol is None else dual_reltol
        L2 = self.L2
        if self.support is not None:  # the refit: off the support, L2 prices the constraint
            L2 = L2.copy()            # W = 0 there, not the fit; it says nothing about the
            L2[: self.d][~self.support] = 0.0  # dual residual's scale
        eps_dual = np.sqrt(p * m) * abstol + dual_reltol * self.rho * _norm(L2)
        self.timing["checks"] += time.perf_counter() - t0
        return {"primal": r, "dual": s, "eps_primal": float(eps_pri),
                "eps_dual": float(eps_dual), "rho": self.rho}

    def dual_bound(self, eps, has_bias: bool) -> float:
        """A lower bound on the optimal l1 from the current dual: y = rho L1 (in N_C(U), so
        y >= 0 off Omega) is made to sum to zero per neuron on Omega when there is a bias, then
        each neuron's column is scaled into ||Xs^T y_j||_inf <= 1; the dual function is
        -sigma_C(y) (the support function of C). Weak duality makes it a certificate:
        l1(W) - bound >= true gap."""
        t0 = time.perf_counter()
        t = self.t
        Y = np.ascontiguousarray(t.Y, dtype=np.float64)
        V = Y if t.V is None else np.ascontiguousarray(t.V, dtype=np.float64)
        y = np.empty(self.L1.shape, order="F")
        lin, nrm2 = dual_terms(self.L1, self.rho, self.omega, Y, V, t.V is not None, has_bias,
                               y)
        lin /= self.c  # Y and V in the scaled units of y
        g = _dgemm(1.0 / self.c, self.Xa64, y, trans_a=1)  # float64 whatever the iterations'
        # dtype: a certificate. One scale per neuron: the dual constraints are per column, so
        # a neuron whose gradient overshoots 1 does not shrink every other neuron's share
        scale = np.maximum(1.0, np.max(np.abs(g[: self.d]), axis=0)) if self.d else np.ones(
            y.shape[1])
        nrm = np.sqrt(nrm2) / scale
        eps_s = np.asarray(eps, dtype=np.float64) / self.c
        ball = float(np.sum(eps_s * nrm)) if eps_s.ndim == 1 else float(eps_s) * _norm(nrm)
        self.timing["checks"] += time.perf_counter() - t0
        return -(float(np.sum(lin / scale)) + ball)

    def rescale_rho(self, factor: float) -> None:
        """rho and rho_fit times factor (their ratio, hence the factor, unchanged); the scaled
        duals move inversely."""
        self.rho *= factor
        self.L1 /= factor
        self.L2 /= factor

    def weights(self) -> np.ndarray:
        """W = Q^T (m x p) in float64: exactly sparse; a copy (the iterations go on in Q)."""
        return np.array(self.Q.T, dtype=np.float64, order="C")

    def violation(self, W: np.ndarray, eps) -> float:
        """Distance of Xa W^T to C relative to eps: sqrt(excess of the ball norm^2 + ||positive
        part off Omega||^2) / eps (per neuron: the worst neuron). The product runs in the
        iteration's precision (in refine mode: float32 on the difference from B's float64
        reference); the comparison in float64."""
        t0 = time.perf_counter()
        ref = self.refine
        if ref is not None and ref.get("B") is not None:  # X W^T = X B_ref + X (W^T - B_ref)
            D = np.subtract(W.T, ref["B"], order="F").astype(np.float32, order="F")
            Z = self.c * (ref["XB"] + ref["sgemm"](1.0, ref["X32"], D))
        else:  # (W X^T)^T: C-ordered like the targets, read in place by the kernel
            Z = self.gemm(self.c, np.asfortranarray(W, dtype=self.dtype), self.X, trans_b=1).T
        out = relative_violation(Z, self.t, eps)
        self.timing["checks"] += time.perf_counter() - t0
        return out


def _norm(a: np.ndarray) -> float:
    # np.linalg.norm goes through numpy's BLAS (dot), whose thread pool is not scipy's: waking
    # it between the iterations' scipy BLAS calls made the next products twice as slow.
    return float(np.sqrt(np.sum(np.square(a, dtype=np.float64))))


def relative_violation(Z: np.ndarray, t: NetTrimTargets, eps) -> float:
    """dist(Z, C) / eps for the constraint set C of ``t`` (per neuron when eps is an array;
    where eps is 0, relative to the fit's target: ``violation_scale``)."""
    eps = np.asarray(eps, dtype=np.float64)
    scale = violation_scale(t, eps)
    if t.omega is None:
        fit2 = np.sum(np.square(Z - t.Y, dtype=np.float64), axis=0)
        over2 = np.zeros(Z.shape[1])
    else:
        fit2, over2 = violation_sums(*_row_order(Z, t.Y, t.V, t.omega))
    if eps.ndim == 1:
        ball = np.maximum(np.sqrt(fit2) - eps, 0.0)
        return float(np.max(np.sqrt(ball**2 + over2) / np.maximum(scale, 1e-300)))
    ball = max(float(np.sqrt(fit2.sum())) - float(eps), 0.0)
    return float(np.sqrt(ball**2 + over2.sum()) / max(float(scale), 1e-300))


def _row_order(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays C-ordered (a copy only of one that is not): the kernel walks rows."""
    return [np.ascontiguousarray(a) for a in arrays]
