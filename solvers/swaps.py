"""Coordinate-wise swap local search for l0 least squares (the local search of CHITA, Benbaki
et al. ICML 2023), as a Numba kernel over independent rows.

The objective separates over rows: f_i(w) = (w - w0)^T H (w - w0). With g = H (w - w0), moving
weight a (kept) to zero and letting weight b (pruned) take its best value v changes f_i by

    delta = w_a^2 H_aa - 2 w_a g_a - (w_a H_ab - g_b)^2 / H_bb,   v = (w_a H_ab - g_b) / H_bb,

so a swap is priced in O(1) once g is known. Searching every pair costs O(|S||P|) per swap;
like CHITA we shortlist the ``n_cand`` kept weights that are cheapest to remove and the
``n_cand`` pruned weights whose addition helps most, price those pairs exactly, and apply the
best one if it lowers f by more than ``rtol * f_i``. For N:M, pairs stay within a group. The
row count and the pattern are preserved by construction.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def _shortlist(score, allowed, c):
    """Indices of the (at most) c largest score[j] with allowed[j]."""
    idx = np.flatnonzero(allowed)
    if idx.size <= c:
        return idx
    vals = score[idx]
    t = np.partition(vals, vals.size - c)[vals.size - c]
    out = np.empty(c, dtype=np.int64)
    n = 0
    for t_pass in range(2):
        for q in range(idx.size):
            if n >= c:
                break
            if (t_pass == 0 and vals[q] > t) or (t_pass == 1 and vals[q] == t):
                out[n] = idx[q]
                n += 1
    return out[:n]


@numba.njit(cache=True)
def _best_swap(w, g, H, keep, d, group, n_cand):
    p = w.size
    rem = np.full(p, -np.inf)  # negated removal cost: larger is a cheaper removal
    add = np.full(p, -np.inf)  # gain of adding alone: g_b^2 / H_bb
    can_rem = np.zeros(p, dtype=np.bool_)
    can_add = np.zeros(p, dtype=np.bool_)
    for j in range(d):
        if keep[j]:
            rem[j] = -(w[j] * w[j] * H[j, j] - 2.0 * w[j] * g[j])
            can_rem[j] = True
        elif H[j, j] > 0:
            add[j] = g[j] * g[j] / H[j, j]
            can_add[j] = True
    if group > 0:  # N:M: every (kept, pruned) pair inside a group is a candidate
        A = np.flatnonzero(can_rem)
        B = np.flatnonzero(can_add)
    else:
        A = _shortlist(rem, can_rem, n_cand)
        B = _shortlist(add, can_add, n_cand)
    best, ba, bb, bv = 0.0, -1, -1, 0.0
    for a in A:
        base = -rem[a]
        for b in B:
            if group > 0 and a // group != b // group:
                continue
            r = w[a] * H[a, b] - g[b]
            delta = base - r * r / H[b, b]
            if delta < best:
                best, ba, bb, bv = delta, a, b, r / H[b, b]
    return best, ba, bb, bv


@numba.njit(cache=True, parallel=True)
def swap_search(W, W0, G, H, keep, d, group, n_cand, max_swaps, rtol):
    """Improve every row of W in place by up to ``max_swaps`` swaps; G = (W - W0) H on entry.

    Returns the number of swaps made per row.
    """
    m, p = W.shape
    counts = np.zeros(m, dtype=np.int64)
    for i in numba.prange(m):
        w, g, k = W[i], G[i], keep[i]
        f = 0.0
        for j in range(p):
            f += (w[j] - W0[i, j]) * g[j]
        for _ in range(max_swaps):
            delta, a, b, v = _best_swap(w, g, H, k, d, group, n_cand)
            if a < 0 or delta >= -rtol * f:
                break
            wa = w[a]
            for j in range(p):  # g += H (change in w)
                g[j] += -wa * H[a, j] + v * H[b, j]
            w[a], w[b] = 0.0, v
            k[a], k[b] = False, True
            f += delta
            counts[i] += 1
    return counts


def transfer_between_rows(W, G, H, keep, d, rtol) -> int:
    """Move kept weights from rows where one is cheap to drop to rows where one helps most.

    Only for the layer-wide pattern, whose per-row counts are free. Rows are independent, so
    dropping weight a of row r and adding weight b of row q changes f by exactly
    cost_r(a) - gain_q(b), priced with the single-move formulas above. Each row takes part in
    at most one transfer per call. W, G and keep are updated in place; returns the count.
    """
    diag = np.diag(H)[:d]
    Wd, Gd, Kd = W[:, :d], G[:, :d], keep[:, :d]
    cost = np.where(Kd, Wd * Wd * diag - 2 * Wd * Gd, np.inf)
    gain = np.where(~Kd & (diag > 0), Gd * Gd / np.where(diag > 0, diag, 1.0), -np.inf)
    a_idx, b_idx = cost.argmin(axis=1), gain.argmax(axis=1)
    rows = np.arange(W.shape[0])
    c, g = cost[rows, a_idx], gain[rows, b_idx]
    donors, takers = np.argsort(c), np.argsort(-g)
    used = np.zeros(W.shape[0], dtype=bool)
    moved = 0
    scale = float(np.abs(c[np.isfinite(c)]).max(initial=0.0)) * rtol
    for r, q in zip(donors, takers, strict=True):
        if r == q or used[r] or used[q] or not (c[r] - g[q] < -scale):
            continue
        a, b = a_idx[r], b_idx[q]
        for row, j, new in ((r, a, 0.0), (q, b, -G[q, b] / H[b, b])):
            step = new - W[row, j]
            G[row] += step * H[j]
            W[row, j] = new
        keep[r, a], keep[q, b] = False, True
        used[r] = used[q] = True
        moved += 1
    return moved
