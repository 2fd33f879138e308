"""Restoring a Net-Trim iterate's feasibility on its own support.

ADMM reaches Net-Trim's optimal l1 long before its exactly sparse iterate W (the soft-threshold
output) satisfies the constraints: on the 784->300 MNIST layer the l1 is within 5e-5 of the
optimum after 200 iterations, but about 6000 clip constraints off Omega (outputs the optimum
puts exactly on their bound) still overshoot, and it took 460 iterations for the overshoot to
fall below 1e-5 of eps by itself. ``restore`` moves W by a minimum-norm change that keeps its
support, so the l1 hardly moves (1e-6 to 2e-5 relative: it grows with the violation corrected,
4-6e-5 of eps for a float32 iterate at P = 10000), and the result is feasible to rounding:

1. clip rows: for every neuron j, the rows off Omega where (Xa w_j)_i > V_ij join a held set
   H_j, and w_j on its support S_j moves by the least-norm change that puts every held row on
   its bound, dw = -A^T (A A^T)^-1 (A w_j - V_Hj) with A = Xa[H_j, S_j] (a small system: a few
   rows per neuron). A few rounds, since a change can push another row over.
2. the ball: if ||(Xa W^T - Y)_Omega|| exceeds eps, W moves along the fit's gradient on the
   support, projected onto the null space of the held rows (which stay on their bounds), by
   the step that brings the norm to eps (1 - BALL_MARGIN) exactly (a quadratic in the step);
   per neuron when eps is.

Steps 1-2 repeat a few times; the caller measures the result and keeps it only when it is
feasible to its tolerance, so a failed restoration costs time, never correctness. Every
product with Xa runs in float64 through scipy's BLAS (the ADMM's library: see
nettrim_engine.py on two BLAS thread pools).
"""

from __future__ import annotations

import numba
import numpy as np
import scipy.linalg.blas

from layertrim.solvers.nettrim_rules import NetTrimTargets

CLIP_ROUNDS = 3  # clip-row rounds per pass
PASSES = 3  # clip rows then the ball, this many times at most
BALL_MARGIN = 1e-7  # the ball step aims this far inside the radius (relative to eps)
WORK_LIMIT = 1.0  # the held systems' flops over a whole restoration (every round and ball
# pass), in products Xa W^T (their loops run about 3x slower than a BLAS product): one that
# would cost more (an iterate far from the optimum, thousands of overshooting rows) stops.
# At 0.5, 784->300 at P = 10000 gave up 2% short of it, at its last drift correction, after
# 1.8 s of work (1.5 s for a success), on a restoration that would have stopped the solve
# 20 iterations (1.5 s) earlier
WORK_FLOOR = 1e7  # flops always allowed (tiny layers: a product is nothing there)
DRIFT = 1e-12  # a held row this far off its bound after a ball step (relative to the
# neuron's largest output; with a tolerance, this far plus what it allows) is put back on it
RIDGE = 1e-12  # relative to mean(diag(A A^T)): duplicate held rows make A A^T singular

_dgemm = scipy.linalg.blas.get_blas_funcs("gemm", dtype=np.dtype(np.float64))


@numba.njit(cache=True, fastmath=True)
def _held_system(Xa, rows, S):
    """A = Xa[rows][:, S] and the Cholesky factor L of its normal matrix plus a small ridge:
    A A^T when there are no more held rows than weights, else A^T A (a dead neuron, Omega
    nearly empty, can hold every row: its system is then at most p x p). Plain loops: the
    systems are small, and numba compiled its BLAS/LAPACK bindings no faster."""
    k, s = rows.size, S.size
    A = np.empty((k, s))
    for a in range(k):
        for b in range(s):
            A[a, b] = Xa[rows[a], S[b]]
    by_rows = k <= s
    q = k if by_rows else s
    L = np.zeros((q, q))
    for a in range(q):
        for c in range(a + 1):
            acc = 0.0
            if by_rows:
                for b in range(s):
                    acc += A[a, b] * A[c, b]
            else:
                for b in range(k):
                    acc += A[b, a] * A[b, c]
            L[a, c] = acc
    ridge = 0.0
    for a in range(q):
        ridge += L[a, a]
    ridge = RIDGE * max(ridge / max(q, 1), 1e-300)
    for a in range(q):  # in place: the lower triangle holds the matrix, then its factor
        L[a, a] += ridge
        for c in range(a + 1):
            acc = L[a, c]
            for e in range(c):
                acc -= L[a, e] * L[c, e]
            if a == c:
                L[a, a] = np.sqrt(max(acc, 1e-300))
            else:
                L[a, c] = acc / L[c, c]
    return A, L, by_rows


@numba.njit(cache=True)
def _chol_solve(L, z):
    """(L L^T)^-1 z for a lower-triangular L."""
    k = z.size
    y = np.empty(k)
    for i in range(k):
        s = z[i]
        for j in range(i):
            s -= L[i, j] * y[j]
        y[i] = s / L[i, i]
    for i in range(k - 1, -1, -1):
        s = y[i]
        for j in range(i + 1, k):
            s -= L[j, i] * y[j]
        y[i] = s / L[i, i]
    return y


@numba.njit(cache=True, fastmath=True)
def _times(A, v):
    """A v."""
    out = np.zeros(A.shape[0])
    for a in range(A.shape[0]):
        acc = 0.0
        for b in range(A.shape[1]):
            acc += A[a, b] * v[b]
        out[a] = acc
    return out


@numba.njit(cache=True, fastmath=True)
def _t_times(A, v):
    """A^T v."""
    out = np.zeros(A.shape[1])
    for a in range(A.shape[0]):
        for b in range(A.shape[1]):
            out[b] += A[a, b] * v[a]
    return out


@numba.njit(cache=True)
def _least_change(A, L, by_rows, z):
    """The least-norm dw with A dw = z (by rows), or the least-squares one (more held rows
    than weights; exact when the held rows can all be met)."""
    if by_rows:
        return _t_times(A, _chol_solve(L, z))
    return _chol_solve(L, _t_times(A, z))


@numba.njit(cache=True)
def _support(w, d):
    """Indices of w's nonzero weights, and every column past d (the unpenalised bias)."""
    keep = np.zeros(w.size, np.bool_)
    for i in range(w.size):
        keep[i] = i >= d or w[i] != 0.0
    return np.flatnonzero(keep)


@numba.njit(cache=True)
def _clip_step(Xa, W, Z, bound, held, d, neurons):
    """Put every held row of each of ``neurons`` on its bound (W in place)."""
    for j in neurons:
        rows = np.flatnonzero(held[:, j])
        S = _support(W[j], d)
        A, L, by_rows = _held_system(Xa, rows, S)
        z = np.empty(rows.size)
        for a in range(rows.size):
            z[a] = Z[rows[a], j] - bound[rows[a], j]
        dw = _least_change(A, L, by_rows, z)
        for b in range(S.size):
            W[j, S[b]] -= dw[b]


@numba.njit(cache=True)
def _ball_direction(Xa, W, grad, held, d):
    """The fit's gradient on each neuron's support, minus its part along the held rows: a
    step along it leaves every held row where it is."""
    p, m = grad.shape
    out = np.zeros((m, p))
    for j in range(m):
        S = _support(W[j], d)
        g = np.empty(S.size)
        for b in range(S.size):
            g[b] = grad[S[b], j]
        rows = np.flatnonzero(held[:, j]) if held.shape[0] else np.zeros(0, np.int64)
        if rows.size:
            A, L, by_rows = _held_system(Xa, rows, S)
            # twice: one projection leaves a part along the rows of order cond(A A^T) times
            # the rounding, which a long step (a ball out of reach in a small null space)
            # blows up into rows well off their bounds; a second removes it
            for _ in range(2):
                g = g - _least_change(A, L, by_rows, _times(A, g))
        for b in range(S.size):
            out[j, S[b]] = g[b]
    return out


def _work(held: np.ndarray, W: np.ndarray, d: int, neurons: np.ndarray) -> float:
    """Flops of the held systems of ``neurons``: a normal matrix and its factor,
    min(k, s)^2 max(k, s) for k held rows and s weights."""
    k = held[:, neurons].sum(axis=0).astype(np.float64)
    s = np.count_nonzero(W[neurons, :d], axis=1) + (W.shape[1] - d)
    return float(np.sum(np.minimum(k, s) ** 2 * np.maximum(k, s)))


def _drifted(Z: np.ndarray, V: np.ndarray, held: np.ndarray, W: np.ndarray, d: int,
             eps: np.ndarray, tol: float) -> np.ndarray:
    """Neurons whose held rows a ball step moved off their bounds by more than DRIFT of the
    neuron's largest output, and (with ``tol``) over them by more than rows that many could
    be while the clip part of the violation stays within tol * eps: below the bound is
    feasible, and a tolerance asks no more. A neuron holding at least as many rows as it has
    weights is left out: its rows are met in least squares only, and putting them back would
    undo its share of the ball step."""
    count = held.sum(axis=0)
    exact = count < np.count_nonzero(W[:, :d], axis=1) + (W.shape[1] - d)
    floor = DRIFT * np.abs(Z).max(axis=0)
    if tol == 0:
        off = np.where(held, np.abs(Z - V), 0.0).max(axis=0)
        return np.flatnonzero(exact & (off > floor))
    slack = tol * (eps / np.sqrt(max(1, count.sum())) if eps.ndim == 0
                   else eps / np.sqrt(np.maximum(count, 1)))
    return np.flatnonzero(exact & (np.where(held, Z - V, 0.0).max(axis=0) > floor + slack))


def _gave_up(W0: np.ndarray, info: dict | None) -> np.ndarray:
    if info is not None:
        info["gave_up"] = True
    return W0


def xa_wt(Xa: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Xa W^T, n x m in C order (the targets' layout), as the transpose of an F-order m x n."""
    return _dgemm(1.0, W, Xa, trans_b=1).T


def _step(a: float, b: float, c: float) -> float:
    """The smallest tau >= 0 with a tau^2 - 2 b tau + c = 0 (the residual's norm^2 along the
    step, minus the aim^2), or the norm's minimiser b / a when the aim is out of reach."""
    if a <= 0.0 or b <= 0.0:
        return 0.0
    disc = b * b - a * c
    if disc < 0.0:
        return b / a
    return c / (b + np.sqrt(disc))  # = (b - sqrt(disc)) / a, without the cancellation


def restore(Xa: np.ndarray, W: np.ndarray, t: NetTrimTargets, eps, d: int,
            tol: float = 0.0, info: dict | None = None) -> np.ndarray:
    """A copy of W (m x p, exactly sparse in its first d columns) moved on its support towards
    the constraint set of ``t`` at radius ``eps`` (see the module docstring); it stops once
    the ball is within ``tol`` * eps of its radius. W itself comes back when the held rows'
    systems would cost more than WORK_LIMIT products in all (an iterate far from
    feasibility). Xa is
    n x p in float64 (Fortran order, or it is copied); the caller measures the result's
    violation. ``info``, when given, receives "held": the rows held on their bounds (n x m; 0 x m
    for a linear layer, which has none; a neuron holding at least as many rows as it has
    weights meets them in least squares only), and "gave_up": True when the work limit
    handed W back unchanged."""
    W0 = W
    W = np.array(W, dtype=np.float64, order="C")
    Xa = np.asfortranarray(Xa, dtype=np.float64)
    eps = np.asarray(eps, dtype=np.float64)
    relu = t.omega is not None
    held = np.zeros(t.Y.shape if relu else (0, W.shape[0]), np.bool_)
    if info is not None:
        info["held"], info["gave_up"] = held, False  # held: filled in place
    off = ~t.omega if relu else None
    Z = xa_wt(Xa, W)
    budget, spent = max(WORK_LIMIT * Z.size * Xa.shape[1], WORK_FLOOR), 0.0
    for _ in range(PASSES):
        for _ in range(CLIP_ROUNDS if relu else 0):
            # held rows stay on their bounds (the ball step moves along their null space):
            # only rows that newly overshoot make a neuron move
            new = (Z > t.V) & off & ~held
            neurons = np.flatnonzero(new.any(axis=0))
            if neurons.size == 0:
                break
            held |= new
            spent += _work(held, W, d, neurons)
            if spent > budget:
                return _gave_up(W0, info)  # too far from feasible: the ADMM goes on
            _clip_step(Xa, W, Z, t.V, held, d, neurons)
            Z[:, neurons] = xa_wt(Xa, W[neurons])
        R = Z - t.Y if not relu else np.where(t.omega, Z - t.Y, 0.0)
        per = np.sqrt(np.sum(R**2, axis=0))
        aim = eps * (1.0 - BALL_MARGIN)
        if eps.ndim == 0:
            nrm = float(np.sqrt(np.sum(per**2)))
            if nrm <= eps * (1.0 + tol):
                break
        elif np.all(per <= eps * (1.0 + tol)):
            break
        if relu:  # the ball direction factors every neuron's held system again
            spent += _work(held, W, d, np.arange(W.shape[0]))
            if spent > budget:
                return _gave_up(W0, info)
        grad = _dgemm(1.0, R.T, Xa).T  # p x m: R's gradient Xa^T R
        G = _ball_direction(Xa, W, grad, held, d)
        D = xa_wt(Xa, G)  # the outputs' change per unit step
        if relu:
            D[~t.omega] = 0.0
        a, b = np.sum(D**2, axis=0), np.sum(R * D, axis=0)
        if eps.ndim == 0:  # one step tau for all: ||R - tau D||^2 = aim^2, the smaller root
            tau = np.full(len(per), _step(a.sum(), b.sum(), nrm**2 - float(aim)**2))
        else:
            tau = np.array([_step(a[j], b[j], per[j] ** 2 - aim[j] ** 2) if per[j] > aim[j]
                            else 0.0 for j in range(len(per))])
        W -= tau[:, None] * G
        Z = xa_wt(Xa, W)
        if relu:  # a long step along a small null space moves held rows by its rounding
            drifted = _drifted(Z, t.V, held, W, d, eps, tol)
            if drifted.size:
                spent += _work(held, W, d, drifted)
                if spent > budget:
                    return _gave_up(W0, info)
                _clip_step(Xa, W, Z, t.V, held, d, drifted)
                Z[:, drifted] = xa_wt(Xa, W[drifted])
    return W
