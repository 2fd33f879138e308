"""Projections onto sparsity patterns: keep the top-scoring weights, exactly k of them.

Selection uses numpy's argpartition (introselect), O(md) per call, never a full sort.
Ties are broken deterministically by argpartition's order.
"""

from __future__ import annotations

import numpy as np

from layertrim.pattern import Pattern


def layer_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries of the whole matrix."""
    mask = np.zeros(scores.shape, dtype=bool)
    if k >= scores.size:
        mask[...] = True
    elif k > 0:
        flat = np.argpartition(-scores, k - 1, axis=None)[:k]
        mask.flat[flat] = True
    return mask


def row_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Mask of the k largest entries of every row."""
    m, d = scores.shape
    mask = np.zeros((m, d), dtype=bool)
    if k >= d:
        mask[...] = True
    elif k > 0:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        np.put_along_axis(mask, idx, True, axis=1)
    return mask


def rows_topk(scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mask keeping counts[i] largest entries of row i (counts may differ by row)."""
    m, d = scores.shape
    mask = np.zeros((m, d), dtype=bool)
    for c in np.unique(counts):
        rows = np.flatnonzero(counts == c)
        mask[rows] = row_topk(scores[rows], int(c))
    return mask


def nm_topk(scores: np.ndarray, n: int, m_group: int) -> np.ndarray:
    """Mask keeping the n largest entries in every group of m_group consecutive columns."""
    rows, d = scores.shape
    groups = scores.reshape(rows, d // m_group, m_group)
    idx = np.argpartition(-groups, n - 1, axis=2)[:, :, :n]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=2)
    return mask.reshape(rows, d)


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
