"""Ground truth for tiny l0 least-squares problems by enumerating every support.

f separates over rows, so for each row and each support size c the best support is found by
enumerating all subsets (2^d, d <= 12); a small dynamic program then splits a layer-wide budget
over the rows. N:M patterns enumerate only the subsets with exactly N per group.
"""

from __future__ import annotations

import itertools

import numpy as np


def _row_value(H, w0, support, bias):
    """min over w supported on ``support`` (plus the bias column) of (w - w0)^T H (w - w0)."""
    p = H.shape[0]
    S = list(support) + ([p - 1] if bias else [])
    P = [j for j in range(p) if j not in S]
    if not P:
        return 0.0
    if not S:
        return float(w0 @ H @ w0)
    # (w - w0) on P is -w0_P; on S the optimum solves H_SS dS = H_SP w0_P
    dS = np.linalg.solve(H[np.ix_(S, S)], H[np.ix_(S, P)] @ w0[P])
    e = np.zeros(p)
    e[S] = dS
    e[P] = -w0[P]
    return float(e @ H @ e)


def best_per_row(H, W0a, d, bias, sizes, nm=None):
    """table[i][c] = best value of row i with exactly c kept weights (c in ``sizes``)."""
    table = []
    for i in range(W0a.shape[0]):
        best = {}
        for c in sizes:
            vals = []
            for S in itertools.combinations(range(d), c):
                if nm is not None:
                    n, g = nm
                    counts = np.bincount(np.array(S, dtype=int) // g, minlength=d // g)
                    if np.any(counts != n):
                        continue
                vals.append(_row_value(H, W0a[i], S, bias))
            best[c] = min(vals)
        table.append(best)
    return table


def optimum(problem) -> float:
    """Exact minimum of the problem's least-squares objective over its pattern set."""
    H, W0a, d = problem.H, problem.W0a, problem.d
    bias = problem.bias is not None
    pat = problem.pattern
    if pat.kind == "row":
        t = best_per_row(H, W0a, d, bias, [problem.row_nnz])
        return sum(r[problem.row_nnz] for r in t)
    if pat.kind == "nm":
        c = d // pat.m * pat.n
        t = best_per_row(H, W0a, d, bias, [c], nm=(pat.n, pat.m))
        return sum(r[c] for r in t)
    k = problem.nnz
    t = best_per_row(H, W0a, d, bias, range(0, d + 1))
    # split the layer budget k over rows: dp[j] = best total using j weights so far
    dp = np.full(k + 1, np.inf)
    dp[0] = 0.0
    for row in t:
        new = np.full(k + 1, np.inf)
        for j in range(k + 1):
            if np.isfinite(dp[j]):
                for c in range(0, min(d, k - j) + 1):
                    new[j + c] = min(new[j + c], dp[j] + row[c])
        dp = new
    return float(dp[k])
