"""Projections onto sparsity patterns: keep the top-scoring weights, exactly k of them.

The kernels are Numba-compiled: selection is introselect (``np.partition``), O(md) per call,
never a full sort, and rows run in parallel. Ties at the threshold go to the lowest index, so
masks are deterministic. Scores must be finite (callers pass |W| or other finite scores).
"""

from __future__ import annotations

import numba
import numpy as np

from layertrim.pattern import Pattern


@numba.njit(cache=True)
def _fill_topk(row, k, out):
    """Set out[j] for the k largest row[j]; ties at the threshold go to the lowest indices."""
    d = row.size
    if k >= d:
        out[:] = True
        return
    if k <= 0:
        return
    t = np.partition(row, d - k)[d - k]  # introselect: the k-th largest value, O(d)
    c = 0
    for j in range(d):
        if row[j] > t:
            out[j] = True
            c += 1
    for j in range(d):
        if c >= k:
            break
        if row[j] == t and not out[j]:
            out[j] = True
            c += 1


@numba.njit(cache=True, parallel=True)
def _rows_kernel(scores, counts, mask):
    for i in numba.prange(scores.shape[0]):
        _fill_topk(scores[i], counts[i], mask[i])


@numba.njit(cache=True, parallel=True)
def _nm_kernel(scores, n, group, mask):
    rows, d = scores.shape
    for i in numba.prange(rows):
        for g0 in range(0, d, group):
            # N of M by repeated max: M is tiny (4, 8), so this beats any selection routine
            for _ in range(n):
                best = -1
                for j in range(g0, g0 + group):
                    if not mask[i, j] and (best < 0 or scores[i, j] > scores[i, best]):
                        best = j
                mask[i, best] = True


def _scores(scores: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(scores, dtype=np.float64)


@numba.njit(cache=True, parallel=True)
def _count_above(flat, t, chunk):
    n_chunks = (flat.size + chunk - 1) // chunk
    counts = np.zeros(n_chunks, dtype=np.int64)
    for c in numba.prange(n_chunks):
        n = 0
        for j in range(c * chunk, min((c + 1) * chunk, flat.size)):
            if flat[j] > t:
                n += 1
        counts[c] = n
    return counts.sum()


@numba.njit(cache=True, parallel=True)
def _mark_above(flat, t, chunk, out):
    for c in numba.prange((flat.size + chunk - 1) // chunk):
        for j in range(c * chunk, min((c + 1) * chunk, flat.size)):
            out[j] = flat[j] > t


@numba.njit(cache=True)
def _kth_largest_bracketed(flat, k, lo, hi, above_hi):
    """The k-th largest value given lo <= it <= hi and ``above_hi`` values > hi."""
    cand = flat[(flat >= lo) & (flat <= hi)]
    r = k - above_hi  # rank of the answer among the candidates, from the top
    return np.partition(cand, cand.size - r)[cand.size - r]


@numba.njit(cache=True)
def _fill_ties(flat, t, need, out):
    for j in range(flat.size):
        if need <= 0:
            break
        if flat[j] == t and not out[j]:
            out[j] = True
            need -= 1


_CHUNK = 1 << 16
_LARGE = 1 << 20


def _layer_threshold(flat: np.ndarray, k: int) -> float:
    """k-th largest of ``flat``. Large inputs: a strided sample brackets the answer, parallel
    counts confirm the bracket, and only the values inside it are selected exactly."""
    n = flat.size
    if n >= _LARGE:
        sample = np.sort(flat[:: n // 65536])
        pos = len(sample) * (1 - k / n)
        margin = 4 * np.sqrt(len(sample)) + 64
        lo = sample[max(int(pos - margin), 0)]
        hi = sample[min(int(pos + margin), len(sample) - 1)]
        above_hi = _count_above(flat, hi, _CHUNK)
        at_least_lo = n - _count_above(-flat, -lo, _CHUNK)  # values >= lo
        if above_hi < k <= at_least_lo and at_least_lo - above_hi < n // 8:
            return float(_kth_largest_bracketed(flat, k, lo, hi, above_hi))
    return float(np.partition(flat, n - k)[n - k])  # small input or a missed bracket


def layer_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries of the whole matrix (ties to the lowest flat index)."""
    s = _scores(scores)
    mask = np.zeros(s.shape, dtype=bool)
    flat, out = s.reshape(-1), mask.reshape(-1)
    k = int(k)
    if k >= flat.size:
        out[:] = True
    elif k > 0:
        t = _layer_threshold(flat, k)
        if flat.size >= _LARGE:
            _mark_above(flat, t, _CHUNK, out)
        else:  # waking Numba's thread pool cost ~2 ms, 100x the work, on a SparseGPT block
            np.greater(flat, t, out=out)
        need = k - int(np.count_nonzero(out))
        if need > 0:
            _fill_ties(flat, t, need, out)
    return mask


def row_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries of every row."""
    return rows_topk(scores, np.full(scores.shape[0], int(k)))


def rows_topk(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mask keeping counts[i] largest entries of row i (counts may differ by row)."""
    s = _scores(scores)
    mask = np.zeros(s.shape, dtype=bool)
    _rows_kernel(s, np.asarray(counts, dtype=np.int64), mask)
    return mask


def nm_topk(scores: np.ndarray, n: int, m_group: int) -> np.ndarray:
    """Mask keeping the n largest entries in every group of m_group consecutive columns."""
    s = _scores(scores)
    mask = np.zeros(s.shape, dtype=bool)
    _nm_kernel(s, int(n), int(m_group), mask)
    return mask


def project_mask(scores: np.ndarray, pattern: Pattern, nnz: int) -> np.ndarray:
    """Top-``nnz`` mask of ``scores`` under ``pattern`` (for row and N:M, nnz = m * per-row)."""
    if pattern.kind == "layer":
        return layer_topk(scores, nnz)
    if pattern.kind == "row":
        return row_topk(scores, nnz // scores.shape[0])
    return nm_topk(scores, pattern.n, pattern.m)


def split_count(total: int, start: int, stop: int, width: int) -> int:
    """Share of ``total`` that falls on columns [start, stop) of ``width`` by cumulative rounding.

    Summed over a partition of [0, width) the shares add up to ``total`` exactly.
    """
    return round(total * stop / width) - round(total * start / width)


def is_valid_mask(mask: np.ndarray, pattern: Pattern, nnz: int) -> bool:
    """True when ``mask`` keeps exactly ``nnz`` entries laid out as ``pattern`` requires."""
    if int(mask.sum()) != nnz:
        return False
    if pattern.kind == "row":
        return bool(np.all(mask.sum(axis=1) == nnz // mask.shape[0]))
    if pattern.kind == "nm":
        rows, d = mask.shape
        per_group = mask.reshape(rows, d // pattern.m, pattern.m).sum(axis=2)
        return bool(np.all(per_group == pattern.n))
    return True
