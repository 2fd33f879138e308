"""Numba kernels of the Net-Trim ADMM: the projection onto the constraint set fused with the
over-relaxation and the dual update, and the soft-threshold fused with its dual update. Each
works in place on preallocated column-major (Fortran-order) arrays, so no temporaries are
allocated per iteration and the inner loops run down the columns (one neuron at a time).

They are serial on purpose: between two BLAS calls, a second thread pool (Numba's) fought
with OpenBLAS's spinning workers and made every iteration several times slower on 2 cores.
"""

from __future__ import annotations

import numba
import numpy as np

# reassociation lets LLVM vectorise the sums (the order of a float64 sum changes in its last
# digits); no other fast-math flag, so comparisons and NaN keep their meaning
_SUM_MATH = {"reassoc"}


@numba.njit(cache=True, fastmath=_SUM_MATH)
def omega_col_sq_norms(AB, U, L, Y, omega, alpha):
    """Per column j: ||(alpha AB + (1 - alpha) U + L - Y)_{Omega, j}||^2 in float64 (off
    Omega the term is computed and dropped: branch-free, so that the loop vectorises)."""
    n, m = AB.shape
    beta = 1.0 - alpha
    out = np.zeros(m)
    for j in range(m):
        acc = 0.0
        for i in range(n):
            t = alpha * AB[i, j] + beta * U[i, j] + L[i, j] - Y[i, j]
            acc += t * t if omega[i, j] else 0.0
        out[j] = acc
    return out


@numba.njit(cache=True)
def project_set_and_update(AB, U, L, YV, omega, eps, alpha, U_old, T, save_old, w_fit=-1.0):
    """U <- Pi_C(alpha AB + (1 - alpha) U + L); L <- L + (alpha AB + (1 - alpha) U) - U_new.

    C = {||(U - Y)_Omega|| <= eps (Frobenius, or per column when eps has length m),
    U_{not Omega} <= V}; YV holds Y on Omega and V off it (one array to stream, not two).
    T = U - L is the next B-step's input; U_old receives the previous U (for the dual
    residual) only when save_old: the kernels are memory-bound, every array counts.

    With w_fit >= 0 (the refit) the ball is replaced by the prox of w_fit/2 ||(U - Y)_Omega||^2:
    U = (w_fit y + t) / (w_fit + 1) on Omega.
    """
    n, m = AB.shape
    fit = w_fit >= 0.0
    scale = np.ones(m)
    if fit:
        scale[:] = 1.0 / (w_fit + 1.0)
    elif eps.size == 1:
        sq = omega_col_sq_norms(AB, U, L, YV, omega, alpha)
        nrm = np.sqrt(sq.sum())
        if nrm > eps[0]:
            scale[:] = eps[0] / nrm
    else:
        sq = omega_col_sq_norms(AB, U, L, YV, omega, alpha)
        for j in range(m):
            nr = np.sqrt(sq[j])
            if nr > eps[j]:
                scale[j] = eps[j] / nr
    if save_old:
        U_old[:, :] = U
    _project_columns(AB, U, L, YV, omega, scale, alpha, T)


@numba.njit(cache=True)
def _project_columns(AB, U, L, YV, omega, scale, alpha, T):
    """The U, L and T updates of project_set_and_update for given per-column ball scales.
    Both branches are computed and one selected: a branch per entry kept LLVM from
    vectorising the loop (2.4x slower in float32 on a 10000 x 300 layer, 1.4x in float64)."""
    n, m = AB.shape
    beta = 1.0 - alpha
    for j in range(m):
        s = scale[j]
        for i in range(n):
            t = alpha * AB[i, j] + beta * U[i, j] + L[i, j]  # over-relaxed, shifted
            y = YV[i, j]
            ball = y + s * (t - y)  # the ball's radial scaling; the fit prox is the same form
            clip = t if t <= y else y
            u = ball if omega[i, j] else clip
            U[i, j] = u
            L[i, j] = t - u
            T[i, j] = u - (t - u)


@numba.njit(cache=True)
def shrink_and_update(B, Q, L, kappa, n_pen, alpha, Q_old, R, save_old, support=None):
    """Q <- soft(alpha B + (1 - alpha) Q + L, kappa) on the first n_pen rows (the weights; the
    bias row is not penalised); L <- L + (alpha B + (1 - alpha) Q) - Q_new; R = Q - L; Q_old
    receives the previous Q when save_old. With a boolean ``support`` (the refit) the first
    n_pen rows are projected onto it instead: t on the support, 0 elsewhere."""
    p, m = B.shape
    for j in range(m):
        for i in range(p):
            q_old = Q[i, j]
            t = alpha * B[i, j] + (1.0 - alpha) * q_old + L[i, j]
            if i >= n_pen:
                q = t
            elif support is not None:
                q = t if support[i, j] else 0.0
            else:
                q = t - kappa if t > kappa else (t + kappa if t < -kappa else 0.0)
            if save_old:
                Q_old[i, j] = q_old
            Q[i, j] = q
            L[i, j] = t - q
            R[i, j] = q - (t - q)


@numba.njit(cache=True)
def violation_sums(Z, Y, V, omega):
    """Per column j: the fit's ||(Z - Y)_{Omega, j}||^2 and the overshoot's
    ||max(Z - V, 0)_{not Omega, j}||^2, in float64 whatever Z's dtype: one pass over Z, Y, V and
    omega in row order (C-ordered arrays), where the array expressions took eight full-size
    temporaries (60-80 ms a check on a 10000 x 300 layer)."""
    n, m = Z.shape
    fit2 = np.zeros(m)
    over2 = np.zeros(m)
    for i in range(n):
        for j in range(m):
            z = np.float64(Z[i, j])
            if omega[i, j]:
                r = z - Y[i, j]
                fit2[j] += r * r
            else:
                e = z - V[i, j]
                if e > 0.0:
                    over2[j] += e * e
    return fit2, over2


@numba.njit(cache=True)
def pair_sums(A, B):
    """(||A - B||^2, ||A||^2, ||B||^2) in float64, in one pass down the columns (Fortran-ordered
    A and B of one shape): the residuals' three norms without full-size temporaries."""
    n, m = A.shape
    diff = a2 = b2 = 0.0
    for j in range(m):
        for i in range(n):
            a = np.float64(A[i, j])
            b = np.float64(B[i, j])
            diff += (a - b) * (a - b)
            a2 += a * a
            b2 += b * b
    return diff, a2, b2


@numba.njit(cache=True)
def dual_terms(L, rho, omega, Y, V, has_v, center, y):
    """The dual bound's (``NetTrimADMM.dual_bound``) elementwise part, in float64 in one pass
    after the column sums: y = rho L, with a bias (``center``) made to sum to zero per column
    by subtracting the column's total divided by its Omega count on Omega (a column without
    Omega is zeroed), written into ``y``; returns per column lin = sum_Omega y Y +
    sum_not-Omega y V (V when ``has_v``) and nrm2 = sum_Omega y^2. Rows outer, columns
    inner: Y, V and y's rows are read from C-ordered or cached column strips, where the array
    expressions took ten full-size temporaries."""
    n, m = L.shape
    mean = np.zeros(m)
    dead = np.zeros(m, dtype=np.bool_)
    if center:
        total = np.zeros(m)
        cnt = np.zeros(m)
        for i in range(n):
            for j in range(m):
                total[j] += rho * np.float64(L[i, j])
                if omega[i, j]:
                    cnt[j] += 1.0
        for j in range(m):
            if cnt[j] > 0:
                mean[j] = total[j] / cnt[j]
            else:
                dead[j] = True
    lin = np.zeros(m)
    nrm2 = np.zeros(m)
    for i in range(n):
        for j in range(m):
            v = rho * np.float64(L[i, j])
            if dead[j]:
                v = 0.0
            elif omega[i, j]:
                v -= mean[j]
                lin[j] += v * Y[i, j]
                nrm2[j] += v * v
            elif has_v:
                lin[j] += v * V[i, j]
            y[i, j] = v
    return lin, nrm2
