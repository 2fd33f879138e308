"""Matrix pivoting (Sredojevic, Cheng, Supic, Marculescu, Sarma, "Structured Deep Neural Network
Pruning via Matrix Pivoting", 2017): permute the rows and columns of a pruned W so its nonzeros
gather into dense b x b blocks, prune to that block-sparse pattern, refit, and store it as a
``scipy.sparse.bsr_array``. A permutation of W's rows is a permutation of the layer's outputs
(undone by permuting the next layer's columns) and of its columns a permutation of its inputs,
so the network computes the same function.

Ordering: a starting order of the bipartite support graph (rows and columns as vertices) from
its degrees, its spectral co-clustering vectors (second singular vectors of
D_r^-1/2 S D_c^-1/2) or reverse Cuthill-McKee, then greedy block assignment: alternately, with
the column blocks fixed, rows are sorted by the column block holding most of their nonzeros
(and how many), then columns likewise against the row blocks. "auto" tries every start and keeps
the order with the largest fraction of nonzeros inside dense blocks.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import reverse_cuthill_mckee

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_damp, finalize
from layertrim.solvers.masks import layer_topk
from layertrim.solvers.registry import register
from layertrim.validate import check_bool, check_int, real_finite_array

STARTS = ("degree", "spectral", "rcm")


def padded_shape(shape, block: int, pad_to: int | None = None) -> tuple[int, int]:
    """``shape`` rounded up to multiples of ``pad_to`` (default ``block``); ``block`` must divide
    the result."""
    check_int("block", block)
    check_int("pad_to", pad_to, allow_none=True)
    p = block if pad_to is None else pad_to
    out = tuple(-(-int(s) // p) * p for s in shape)
    if out[0] % block or out[1] % block:
        raise InvalidInputError(f"block size {block} does not divide the padded shape {out} "
                                f"(shape {tuple(shape)} padded to multiples of {p})")
    return out  # type: ignore[return-value]


def _check_perm(perm, n: int, name: str) -> np.ndarray:
    if perm is None:
        return np.arange(n)
    p = np.asarray(perm)
    if p.shape != (n,) or not np.array_equal(np.sort(p), np.arange(n)):
        raise InvalidInputError(f"{name} must be a permutation of range({n})")
    return p.astype(np.int64)


def _block_counts(S: np.ndarray, block: int, pad_to: int | None = None) -> np.ndarray:
    R, C = padded_shape(S.shape, block, pad_to)
    P = np.zeros((R, C))
    P[: S.shape[0], : S.shape[1]] = S
    return P.reshape(R // block, block, C // block, block).sum(axis=(1, 3))


def block_fraction(W, block: int = 16, *, row_perm=None, col_perm=None,
                   min_density: float = 0.5, pad_to: int | None = None) -> float:
    """Fraction of W's nonzeros lying in b x b blocks (of the permuted, zero-padded W) that
    are at least ``min_density`` full."""
    S = real_finite_array("W", W, 2) != 0
    rp, cp = _check_perm(row_perm, S.shape[0], "row_perm"), _check_perm(col_perm, S.shape[1],
                                                                        "col_perm")
    if not 0 < min_density <= 1:
        raise InvalidInputError(f"min_density must be in (0, 1], got {min_density!r}")
    nnz = int(S.sum())
    if nnz == 0:
        return 0.0
    counts = _block_counts(S[rp][:, cp], block, pad_to)
    return float(counts[counts >= min_density * block * block].sum() / nnz)


def block_coverage(W, block: int = 16, *, row_perm=None, col_perm=None,
                   n_blocks: int | None = None) -> float:
    """Fraction of W's nonzeros inside its ``n_blocks`` fullest b x b blocks (permuted, padded);
    by default n_blocks = ceil(nnz / b^2), the blocks a perfect packing would fill."""
    S = real_finite_array("W", W, 2) != 0
    rp, cp = _check_perm(row_perm, S.shape[0], "row_perm"), _check_perm(col_perm, S.shape[1],
                                                                        "col_perm")
    nnz = int(S.sum())
    if nnz == 0:
        return 0.0
    counts = np.sort(_block_counts(S[rp][:, cp], block).ravel())[::-1]
    k = -(-nnz // (block * block)) if n_blocks is None else int(n_blocks)
    return float(counts[:k].sum() / nnz)


def _start(S: np.ndarray, start: str) -> tuple[np.ndarray, np.ndarray]:
    m, d = S.shape
    rdeg, cdeg = S.sum(axis=1), S.sum(axis=0)
    if start == "degree":
        return np.argsort(-rdeg, kind="stable"), np.argsort(-cdeg, kind="stable")
    if start == "spectral":
        r = 1.0 / np.sqrt(np.maximum(rdeg, 1.0))
        c = 1.0 / np.sqrt(np.maximum(cdeg, 1.0))
        U, _, Vt = np.linalg.svd(r[:, None] * S * c[None, :], full_matrices=False)
        k = 1 if min(U.shape[1], Vt.shape[0]) > 1 else 0
        return np.argsort(U[:, k] * r, kind="stable"), np.argsort(Vt[k] * c, kind="stable")
    adj = scipy.sparse.bmat([[None, scipy.sparse.csr_array(S)],
                             [scipy.sparse.csr_array(S.T), None]], format="csr")
    order = reverse_cuthill_mckee(adj, symmetric_mode=True)
    return order[order < m], order[order >= m] - m


def _refine(S, rp, cp, block, rounds):
    """Greedy block assignment: sort rows by their densest column block, then columns by their
    densest row block, ``rounds`` times; keep the best order seen."""
    best = (block_fraction(S, block, row_perm=rp, col_perm=cp), rp, cp)
    for _ in range(rounds):
        Sc = S[:, cp]
        nb = -(-S.shape[1] // block)
        prof = np.add.reduceat(Sc, np.arange(0, nb * block, block)[:nb], axis=1)
        rp = np.lexsort((-prof.max(axis=1), prof.argmax(axis=1)))
        Sr = S[rp].T
        nb = -(-S.shape[0] // block)
        prof = np.add.reduceat(Sr, np.arange(0, nb * block, block)[:nb], axis=1)
        cp = np.lexsort((-prof.max(axis=1), prof.argmax(axis=1)))
        f = block_fraction(S, block, row_perm=rp, col_perm=cp)
        if f > best[0]:
            best = (f, rp, cp)
    return best


def pivot_order(W, block: int = 16, *, start: str = "auto",
                rounds: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Row and column permutations gathering the nonzeros of W into dense b x b blocks.

    Parameters
    ----------
    W : (m, d) pruned weights (or a bool support).
    block : block side b.
    start : "degree", "spectral", "rcm" or "auto" (best of them after refinement).
    rounds : greedy block-assignment passes.

    Returns
    -------
    (row_perm, col_perm): W[row_perm][:, col_perm] is the pivoted matrix.
    """
    S = (real_finite_array("W", W, 2) != 0).astype(np.float64)
    padded_shape(S.shape, block)
    starts = STARTS if start == "auto" else (start,)
    if start != "auto" and start not in STARTS:
        raise InvalidInputError(f"start must be 'auto' or one of {STARTS}, got {start!r}")
    best = None
    for s in starts:
        cand = _refine(S, *_start(S, s), block, rounds)
        if best is None or cand[0] > best[0]:
            best = cand
    assert best is not None
    return best[1].astype(np.int64), best[2].astype(np.int64)


def block_prune_mask(scores, block: int, n_blocks: int, *, row_perm=None,
                     col_perm=None) -> np.ndarray:
    """Mask (original coordinates) keeping the ``n_blocks`` b x b blocks of the permuted,
    padded matrix with the largest sum of ``scores``."""
    sc = real_finite_array("scores", scores, 2).astype(np.float64)
    m, d = sc.shape
    rp, cp = _check_perm(row_perm, m, "row_perm"), _check_perm(col_perm, d, "col_perm")
    R, C = padded_shape(sc.shape, block)
    P = np.zeros((R, C))
    P[:m, :d] = sc[rp][:, cp]
    energy = P.reshape(R // block, block, C // block, block).sum(axis=(1, 3))
    keep_b = layer_topk(energy, max(1, min(int(n_blocks), energy.size)))
    Mp = np.repeat(np.repeat(keep_b, block, axis=0), block, axis=1)[:m, :d]
    mask = np.zeros((m, d), dtype=bool)
    mask[np.ix_(rp, cp)] = Mp
    return mask


def to_bsr(W, block: int = 16, *, row_perm=None, col_perm=None, pad_to: int | None = None):
    """The permuted, zero-padded W as a ``scipy.sparse.bsr_array`` with b x b blocks (only the
    blocks holding a nonzero are stored)."""
    W = real_finite_array("W", W, 2).astype(np.float64)
    rp, cp = _check_perm(row_perm, W.shape[0], "row_perm"), _check_perm(col_perm, W.shape[1],
                                                                        "col_perm")
    R, C = padded_shape(W.shape, block, pad_to)
    P = np.zeros((R, C))
    P[: W.shape[0], : W.shape[1]] = W[rp][:, cp]
    return scipy.sparse.bsr_array(P, blocksize=(block, block))


def matmul_ratio(B, W_dense, X, *, repeats: int = 20) -> dict:
    """Median time of B @ X (a bsr_array, padded) against W_dense @ X on the same machine.
    X is (d, batch); it is zero-padded to B's column count. Returns times and bsr/dense."""
    X = np.asarray(X, dtype=np.float64)
    Xp = np.zeros((B.shape[1], X.shape[1]))
    Xp[: X.shape[0]] = X
    def med(f):
        f()
        ts = []
        for _ in range(repeats):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts))
    tb = med(lambda: B @ Xp)
    td = med(lambda: W_dense @ X)
    return {"bsr_s": tb, "dense_s": td, "bsr_over_dense": tb / td}


@register("pivot", "block-sparse: pivot rows/columns into dense b x b blocks, keep the "
          "strongest blocks, refit (Sredojevic et al. 2017)")
def solve(problem: LayerProblem, *, block: int = 16, start: str = "auto",
          refit: bool = True, damp: float = 1e-8) -> LayerResult:
    """Magnitude mask at the target, pivot it, keep nnz // b^2 blocks (at least one) by their
    W^2 energy in the pivoted order, map the mask back and refit. Permutations and block
    fractions (dense = at least half full) are in ``settings``. Whole blocks keep a multiple of
    b^2 weights (fewer in edge blocks), so the status is "block_rounded" whenever the kept
    count is not the target's (``settings["target_nnz"]``): a layer smaller than one block
    is kept whole."""
    t0 = time.perf_counter()
    check_damp(damp)
    refit = check_bool("refit", refit)
    if problem.pattern.kind != "layer":
        raise InvalidInputError(f"pivot keeps whole b x b blocks of the layer: use "
                                f"pattern='layer', not {problem.pattern}")
    W = problem.W0
    first = layer_topk(np.abs(W), problem.nnz)
    Wm = np.where(first, W, 0.0)
    rp, cp = pivot_order(Wm, block, start=start)
    mask = block_prune_mask(W**2, block, problem.nnz // (block * block), row_perm=rp,
                            col_perm=cp)
    Wa = problem.W0a
    settings = {"block": block, "start": start, "row_perm": rp.tolist(),
                "col_perm": cp.tolist(),
                "block_fraction_before": block_fraction(Wm, block),
                "block_fraction_after": block_fraction(Wm, block, row_perm=rp, col_perm=cp)}
    if refit:
        from layertrim.solvers.refit import refit as refit_fn

        r = refit_fn(problem, mask, damp=damp)
        Wa = r.W if r.bias is None else np.hstack([r.W, r.bias[:, None]])
    # whole blocks cannot keep an arbitrary count: say so when the target was rounded
    kept = int(np.count_nonzero(mask))
    settings["target_nnz"] = problem.nnz
    return finalize(problem, Wa, mask, solver="pivot", settings=settings, t0=t0,
                    iterations=1, status="solved" if kept == problem.nnz else "block_rounded")
