"""SparseGPT (Frantar & Alistarh, ICML 2023): OBS column sweep with lazy blocked updates.

Columns are visited left to right. With U the upper Cholesky factor of the damped inverse
Hessian (H + lambda I)^{-1}, pruning column i's weights and compensating the columns to its
right is the rank-1 update  W[:, i:] -= ((w - q) / U_ii) U[i, i:]. Updates inside a block of
``blocksize`` columns are applied at once; the rest of the matrix gets them lazily as one
BLAS-3 product per block. The mask is chosen adaptively per block (per N:M group for N:M) from
w^2 / U_ii^2 on the already-updated weights. The bias (augmented last column) is never pruned
but absorbs compensation like any later column.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numba
import numpy as np
import scipy.linalg

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_damp, finalize
from layertrim.solvers.masks import layer_topk, nm_topk, row_topk, split_count
from layertrim.solvers.registry import register


def inverse_hessian_factor(
    H: np.ndarray, damp: float, mean_diag: float
) -> tuple[np.ndarray, float]:
    """Upper Cholesky factor of (H + lambda I)^{-1}, lambda = damp * mean_diag.

    ``mean_diag`` is mean(diag H) over the real inputs (not the bias entry, which is n).
    Retries with a 10x larger damp if the damped H is numerically not positive definite.
    Returns the factor and the lambda actually used.
    """
    lam = damp * mean_diag
    for _ in range(12):
        Hd = H.copy()
        Hd[np.diag_indices_from(Hd)] += lam
        try:
            L = scipy.linalg.cholesky(Hd, lower=True)
            Hinv = scipy.linalg.cho_solve((L, True), np.eye(H.shape[0]))
            return scipy.linalg.cholesky(Hinv, lower=False), lam
        except np.linalg.LinAlgError:
            lam = max(lam * 10, 1e-12 * mean_diag)
    raise InvalidInputError("H + lambda I is not positive definite even after raising the damp")


@register("sparsegpt", "OBS column sweep with lazy blocked updates (Frantar & Alistarh 2023)")
def solve(problem: LayerProblem, *, blocksize: int = 128, damp: float = 0.01) -> LayerResult:
    """Prune with SparseGPT.

    Parameters
    ----------
    blocksize : columns per lazy-update block (rounded to a multiple of M for N:M).
    damp : dampening relative to mean(diag H) (the paper's percdamp).
    """
    t0 = time.perf_counter()
    _check(blocksize, damp)
    return _sweep(problem, _factor(problem, damp), blocksize, damp, t0)


def error_curve(problem: LayerProblem, sparsities: Sequence[float], *, blocksize: int = 128,
                damp: float = 0.01) -> list[float]:
    """The relative error ``solve`` reaches at each sparsity (each level exactly as ``solve``
    on that level's problem), sharing the inverse Hessian factor between the levels: what the
    global allocation's error curves take (layerwise/allocate.py), where the factor was a
    third of each solve."""
    _check(blocksize, damp)
    factor = _factor(problem, damp)
    return [_sweep(problem.with_sparsity(s), factor, blocksize, damp,
                   time.perf_counter()).rel_error for s in sparsities]


def _check(blocksize, damp) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or blocksize < 1:
        raise InvalidInputError(f"blocksize must be an integer >= 1, got {blocksize!r}")
    check_damp(damp)


def _factor(problem: LayerProblem, damp: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The inputs that are always zero, and the upper Cholesky factor of the damped inverse
    Hessian with the lambda used."""
    d = problem.d
    H = problem.H.copy()
    dead = np.flatnonzero(np.diag(H)[:d] == 0)
    H[dead, dead] = 1.0  # an input that is always zero: its weights can go first, for free
    U, lam = inverse_hessian_factor(H, damp, problem.mean_diag())
    return dead, U, lam


def _sweep(problem: LayerProblem, factor: tuple[np.ndarray, np.ndarray, float],
           blocksize: int, damp: float, t0: float) -> LayerResult:
    dead, U, lam = factor
    d, m = problem.d, problem.m
    pat = problem.pattern
    W = problem.W0a.copy()
    if problem.nnz < m * d:  # (with nothing to prune, W stays as it is, off the data too)
        W[:, dead] = 0.0
    B = int(blocksize)
    if pat.kind == "nm":
        B = max(pat.m, B // pat.m * pat.m)
    k, k_row = problem.nnz, problem.row_nnz
    mask = np.zeros((m, d), dtype=bool)
    for i1 in range(0, d, B):
        i2 = min(i1 + B, d)
        W1 = W[:, i1:i2].copy()
        Err1 = np.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        diag1 = np.diag(U1)
        U1c = np.ascontiguousarray(U1)
        if pat.kind == "nm":  # each group's mask from the weights the sweep has updated
            mask1 = np.zeros(W1.shape, dtype=bool)
            for g0 in range(0, i2 - i1, pat.m):
                g = slice(g0, g0 + pat.m)
                mask1[:, g] = nm_topk(W1[:, g] ** 2 / diag1[g] ** 2, pat.n, pat.m)
                _sweep_block(W1, U1c, mask1, Err1, g0, min(g0 + pat.m, i2 - i1))
        else:  # the mask is chosen once per block
            if pat.kind == "layer":
                mask1 = layer_topk(W1**2 / diag1**2, split_count(k, i1, i2, d))
            else:
                mask1 = row_topk(W1**2 / diag1**2, split_count(k_row, i1, i2, d))
            _sweep_block(W1, U1c, mask1, Err1, 0, i2 - i1)
        W[:, i1:i2] = W1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    settings = {"blocksize": int(blocksize), "damp": damp, "lambda": lam}
    return finalize(problem, W, mask, solver="sparsegpt", settings=settings, t0=t0, iterations=d)


@numba.njit(cache=True, error_model="numpy")
def _sweep_block(W1, U1, mask1, Err1, start, stop):
    """The OBS updates of a block's columns [start, stop) for their mask, column by column,
    each compensated on the block's columns to its right: the same arithmetic as
    ``W1[:, i:] -= np.outer(err, U1[i, i:])`` (one product, one subtraction per entry; no
    fused multiply-add), so the result is bitwise that of the NumPy loop, which cost a Python
    iteration and an m x B temporary per column (half of a solve on the MNIST MLP's
    784 -> 300 layer)."""
    m, B = W1.shape
    for i in range(start, stop):
        uii = U1[i, i]
        for r in range(m):
            e = (0.0 if mask1[r, i] else W1[r, i]) / uii
            for j in range(i, B):
                W1[r, j] -= e * U1[i, j]
            if not mask1[r, i]:
                W1[r, i] = 0.0
            Err1[r, i] = e
