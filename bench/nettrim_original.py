"""The baseline for bench/nettrim.py: the original Net-Trim ADMM iteration as its authors run
it (Aghasi, Abdi, Nguyen, Romberg, NeurIPS 2017, Algorithm 1; public code DNNToolBox/Net-Trim,
``NetTrimSolver_np.py``), re-written here from the paper for a same-process comparison.

What makes it the original and not our engine: the inputs are scaled by c0 = 0.3 sqrt(max of
the Gram), rho is fixed (100), the projection uses fancy indexing on Omega and its complement
(temporaries every iteration), there is no over-relaxation, and it stops when
||W3 - W3_prev||_F < 5e-9 * m * p, a fixed threshold. One adaptation: the bias row (ones
column) is not soft-thresholded, so that it solves exactly the program of ``nettrim`` and
``nettrim-cvx`` (the bias is never penalised there).

Rows are samples here (Xa is n x p); the authors' code keeps samples in columns, which is the
same arithmetic transposed.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg


def original_nettrim(Xa, Y, omega, V, eps, *, d, rho=100.0, max_iter=10000):
    """Returns (W (m x p), iterations, seconds). omega None means a linear layer."""
    t0 = time.perf_counter()
    n, p = Xa.shape
    m = Y.shape[1]
    G = Xa.T @ Xa
    c0 = 0.3 * np.sqrt(G.max())
    C = G / c0**2 + np.eye(p)
    L = np.linalg.cholesky(C)
    X, Ys, eps = Xa / c0, Y / c0, eps / c0
    if omega is not None:
        on, off = np.where(omega), np.where(~omega)
        y_on, v_off = Ys[on], (V / c0)[off]
    W1 = np.zeros((n, m))
    W2 = np.zeros((p, m))
    W3 = np.zeros((p, m))
    U1 = np.zeros((n, m))
    U2 = np.zeros((p, m))
    thr = 5e-9 * m * p
    it = 0
    while it < max_iter:
        it += 1
        Z = X @ W3 - U1
        W_prev = W3
        if omega is None:
            D = Z - Ys
            W1 = Ys + D * (eps / max(np.linalg.norm(D), eps))
        else:
            D = Z[on] - y_on
            W1[on] = y_on + D * (eps / max(np.linalg.norm(D), eps))
            W1[off] = np.minimum(Z[off], v_off)
        D = W3 - U2
        W2 = np.sign(D) * np.maximum(np.abs(D) - 1.0 / rho, 0.0)
        W2[d:] = D[d:]  # the bias is not penalised
        R = X.T @ (W1 + U1) + W2 + U2
        W3 = scipy.linalg.solve_triangular(
            L.T, scipy.linalg.solve_triangular(L, R, lower=True), lower=False)
        U1 = U1 + W1 - X @ W3
        U2 = U2 + W2 - W3
        if np.linalg.norm(W3 - W_prev) < thr:
            break
    return W2.T.copy(), it, time.perf_counter() - t0
