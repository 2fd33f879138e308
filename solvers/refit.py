"""Exact least-squares refit of the kept weights on a fixed mask.

For each output row with kept set S (plus the bias column when there is one) and pruned set P:

    minimize (w - w0)^T Hd (w - w0)  s.t.  w_P = 0,        Hd = H + lambda I,

whose optimum is w_S = w0_S + Hd_SS^{-1} Hd_SP w0_P (the "support" form, O(|S|^3) per row),
or equivalently, with G = Hd^{-1}, w = w0 - G_{:,P} (G_PP)^{-1} w0_P (the OBS "complement" form,
O(|P|^3) per row after one O(d^3) inverse). The cheaper form is used per group of rows sharing
a size, and rows of a group are solved as one batched LAPACK call. lambda = damp * mean(diag H)
keeps singular H (dead inputs, n < d) solvable: among equally good solutions it picks the one
closest to w0, and for a full-rank H with a tiny damp it is the plain least-squares optimum.
With damp = 0 the inverse-based complement form is only used when asked for explicitly.

For large supports (large d at low sparsity) the direct solves cost O(m s^3); ``form="pcg"``
(chosen by "auto" when its estimated cost is lower) runs batched preconditioned conjugate
gradients instead, O(m p^2) per iteration, warm-started from ``start`` when given.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_damp, finalize
from layertrim.solvers.refit_pcg import pcg_refit

_BATCH_BYTES = 256 * 2**20  # cap on the stacked (rows x s x s) systems held at once
_PCG_ITERS_ESTIMATE = 30  # typical warm-started PCG iterations, for the cost model of "auto"
_FORMS = ("auto", "support", "complement", "pcg")


def _support_form(Hd, W0a, keep, rows, out):
    """Rows whose kept set (incl. bias) has the same size s: solve Hd_SS dS = Hd_SP w0_P."""
    s = int(keep[rows[0]].sum())
    pruned_w0 = np.where(keep[rows], 0.0, W0a[rows])
    Y = pruned_w0 @ Hd  # row i holds (Hd w0_P) for every column; Hd is symmetric
    chunk = max(1, _BATCH_BYTES // (8 * s * s))
    for c0 in range(0, len(rows), chunk):
        r = rows[c0 : c0 + chunk]
        idx = np.nonzero(keep[r])[1].reshape(len(r), s)
        A = Hd[idx[:, :, None], idx[:, None, :]]
        rhs = np.take_along_axis(Y[c0 : c0 + chunk], idx, axis=1)
        delta = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
        w = np.zeros((len(r), W0a.shape[1]))
        np.put_along_axis(w, idx, np.take_along_axis(W0a[r], idx, axis=1) + delta, axis=1)
        out[r] = w


def _complement_form(G, W0a, keep, rows, out):
    """Rows whose pruned set has the same size p: w = w0 - G_{:,P} (G_PP)^{-1} w0_P."""
    p = int((~keep[rows[0]]).sum())
    dp = W0a.shape[1]
    chunk = max(1, _BATCH_BYTES // (8 * p * (p + dp)))
    for c0 in range(0, len(rows), chunk):
        r = rows[c0 : c0 + chunk]
        idx = np.nonzero(~keep[r])[1].reshape(len(r), p)
        Gpp = G[idx[:, :, None], idx[:, None, :]]
        w0p = np.take_along_axis(W0a[r], idx, axis=1)
        mu = np.linalg.solve(Gpp, w0p[:, :, None])[:, :, 0]
        w = W0a[r] - np.einsum("rpd,rp->rd", G[idx], mu)
        w[~keep[r]] = 0.0
        out[r] = w


def refit(
    problem: LayerProblem,
    mask: np.ndarray,
    *,
    damp: float = 1e-8,
    form: str = "auto",
    start: np.ndarray | None = None,
    pcg_rtol: float = 1e-10,
    pcg_max_iter: int = 200,
    pcg_time_limit: float | None = None,
    pcg_float32: bool = False,
) -> LayerResult:
    """Exact least-squares optimum of the layer on a fixed mask.

    Parameters
    ----------
    problem : the layer problem (its H, W0 and bias are used).
    mask : (m, d) bool, True where a weight may be nonzero.
    damp : ridge lambda relative to mean(diag H); the bias, if any, is always kept and refit.
    form : "auto" (cheapest by a flop estimate), "support", "complement" or "pcg".
    start : (m, d) or augmented (m, d+1) warm start for "pcg" (e.g. the solver's iterate).
    pcg_rtol, pcg_max_iter, pcg_time_limit : PCG stops when an iteration lowers the error by
        less than pcg_rtol of its value, after pcg_max_iter iterations, or after the iteration
        that crosses pcg_time_limit seconds.
    pcg_float32 : float32 products inside PCG (about 1e-7 relative accuracy, half the time).

    Returns
    -------
    LayerResult with ``solver="refit"``; ``iterations`` is the number of rows solved.
    """
    t0 = time.perf_counter()
    mask = np.asarray(mask)
    if mask.shape != problem.W0.shape:
        raise InvalidInputError(f"mask has shape {mask.shape}, expected {problem.W0.shape}")
    if mask.dtype != bool:
        raise InvalidInputError(f"mask must be boolean, got dtype {mask.dtype}")
    if form not in _FORMS:
        raise InvalidInputError(f"form must be one of {_FORMS}, got {form!r}")
    check_damp(damp)
    W0a = problem.W0a
    m, dp = W0a.shape
    keep = np.ones((m, dp), dtype=bool)
    keep[:, : problem.d] = mask
    lam = damp * problem.mean_diag()
    pcg_options = dict(rtol=pcg_rtol, max_iter=pcg_max_iter, time_limit=pcg_time_limit,
                       float32_products=pcg_float32)
    if form == "pcg":
        return _refit_pcg(problem, mask, keep, lam, start, t0, damp, pcg_options)
    if form == "auto" and _pcg_is_cheaper(keep):
        # Ill-conditioned inputs (image pixels, dead units) can make CG crawl: give it the
        # iterations that cost as much as the direct solve, and fall back to that if it has
        # not converged by then, so "auto" never costs more than twice the better method.
        pcg_options["max_iter"] = min(pcg_max_iter, _iterations_worth_direct(keep))
        r = _refit_pcg(problem, mask, keep, lam, start, t0, damp, pcg_options)
        if r.settings["pcg_last_decrease"] < pcg_rtol or pcg_time_limit is not None:
            return r
    Hd = problem.H.copy()
    d_idx = np.arange(problem.d)  # the bias entry (n) is always kept: it needs no ridge
    Hd[d_idx, d_idx] += lam
    if lam == 0:
        # dead inputs make H singular; give them a unit diagonal so their (zero) rows solve
        dead = np.diag(Hd) == 0
        Hd[dead, dead] = 1.0

    out = np.zeros_like(W0a)
    s_counts = keep.sum(axis=1)
    G = None
    for s in np.unique(s_counts):
        rows = np.flatnonzero(s_counts == s)
        p = dp - int(s)
        try:
            if p == 0:
                out[rows] = W0a[rows]
            elif s == 0:  # every weight of these rows pruned (and no bias): nothing to fit
                out[rows] = 0.0
            elif form == "complement" or (form == "auto" and lam > 0 and p < s // 2):
                if G is None:
                    G = np.linalg.inv(Hd)
                _complement_form(G, W0a, keep, rows, out)
            else:
                _support_form(Hd, W0a, keep, rows, out)
        except np.linalg.LinAlgError:
            raise InvalidInputError(
                "refit: H restricted to a support is singular (n < d or collinear inputs); "
                "use damp > 0"
            ) from None
    return finalize(problem, out, mask, solver="refit", settings={"damp": damp, "form": form},
                    t0=t0, iterations=m)


def _direct_cost(keep: np.ndarray) -> float:
    """Flops of the direct solves, weighted: batched small LAPACK solves run ~10x below GEMM
    speed."""
    p = keep.shape[1]
    s = keep.sum(axis=1).astype(np.float64)
    return 10.0 * float(np.sum(np.minimum(s, p - s) ** 3)) / 3


def _pcg_is_cheaper(keep: np.ndarray) -> bool:
    m, p = keep.shape
    return _direct_cost(keep) > 2.0 * _PCG_ITERS_ESTIMATE * m * p * p


def _iterations_worth_direct(keep: np.ndarray) -> int:
    m, p = keep.shape
    return max(_PCG_ITERS_ESTIMATE, int(_direct_cost(keep) / (2.0 * m * p * p)))


def _refit_pcg(problem, mask, keep, lam, start, t0, damp, pcg_options) -> LayerResult:
    W0a = problem.W0a
    if start is not None:
        start = np.asarray(start, dtype=np.float64)
        if start.shape == problem.W0.shape and start.shape != W0a.shape:
            start = np.hstack([start, problem.bias[:, None]])
        if start.shape != W0a.shape:
            raise InvalidInputError(f"start has shape {start.shape}, expected {W0a.shape}")
    ridge = np.zeros(W0a.shape[1])
    ridge[: problem.d] = lam
    W, iters, rel = pcg_refit(problem.H, W0a, keep, start, ridge=ridge, **pcg_options)
    settings = {"damp": damp, "form": "pcg", "pcg_iterations": iters, "pcg_last_decrease": rel}
    return finalize(problem, W, mask, solver="refit", settings=settings, t0=t0, iterations=iters)
