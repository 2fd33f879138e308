"""Matrix pivoting: permutations, block density, BSR export."""

import numpy as np
import pytest

import layertrim as lt
from layertrim.errors import InvalidInputError
from layertrim.solvers.pivot import (
    block_coverage,
    block_fraction,
    block_prune_mask,
    padded_shape,
    pivot_order,
    to_bsr,
)


def _planted(seed=0, m=64, d=96, b=16, sparsity=0.9):
    """A matrix whose nonzeros are dense b x b blocks plus noise, rows/cols scrambled."""
    rng = np.random.default_rng(seed)
    W = np.zeros((m, d))
    blocks = rng.choice((m // b) * (d // b), size=max(1, int((1 - sparsity) * m * d) // (b * b)),
                        replace=False)
    for k in blocks:
        i, j = divmod(int(k), d // b)
        W[i * b:(i + 1) * b, j * b:(j + 1) * b] = rng.standard_normal((b, b))
    W[rng.random((m, d)) < 0.01] = 1.0
    return W[rng.permutation(m)][:, rng.permutation(d)]


@pytest.mark.parametrize("start", ["auto", "degree", "spectral", "rcm"])
def test_pivot_permutations_are_permutations_and_invert(start):
    W = _planted(1)
    rp, cp = pivot_order(W, 16, start=start)
    assert np.array_equal(np.sort(rp), np.arange(W.shape[0]))
    assert np.array_equal(np.sort(cp), np.arange(W.shape[1]))
    P = W[rp][:, cp]
    back = np.empty_like(P)
    back[np.ix_(rp, cp)] = P
    np.testing.assert_array_equal(back, W)
    B = to_bsr(W, 16, row_perm=rp, col_perm=cp)
    np.testing.assert_array_equal(B.toarray()[: W.shape[0], : W.shape[1]], P)


def test_pivoting_raises_the_dense_block_fraction_at_90_percent_sparsity():
    W = _planted(2)
    assert abs((W != 0).mean() - 0.1) < 0.03
    rp, cp = pivot_order(W, 16)
    before, after = block_fraction(W, 16), block_fraction(W, 16, row_perm=rp, col_perm=cp)
    assert before < 0.2 and after > 0.6
    assert block_coverage(W, 16, row_perm=rp, col_perm=cp) > block_coverage(W, 16)


def test_bsr_matmul_matches_dense_and_block_mask_keeps_blocks():
    rng = np.random.default_rng(3)
    W = _planted(3)
    rp, cp = pivot_order(W, 16)
    mask = block_prune_mask(W**2, 16, 5, row_perm=rp, col_perm=cp)
    Wb = np.where(mask, W, 0)
    B = to_bsr(Wb, 16, row_perm=rp, col_perm=cp)
    assert B.nnz == 5 * 256  # exactly the kept blocks are stored
    X = rng.standard_normal((W.shape[1], 8))
    np.testing.assert_allclose((B @ np.vstack([X[cp], np.zeros((0, 8))]))[: W.shape[0]],
                               (Wb @ X)[rp], atol=1e-12)


def test_padding_and_block_validation():
    assert padded_shape((300, 784), 16) == (304, 784)
    assert padded_shape((300, 784), 16, pad_to=8) == (304, 784)
    with pytest.raises(InvalidInputError, match="does not divide the padded shape"):
        padded_shape((100, 784), 16, pad_to=8)
    with pytest.raises(InvalidInputError, match="does not divide"):
        to_bsr(np.ones((100, 20)), 16, pad_to=10)
    with pytest.raises(InvalidInputError, match="block must be a positive integer"):
        pivot_order(np.ones((4, 4)), 0)
    with pytest.raises(InvalidInputError, match="permutation"):
        block_fraction(np.ones((4, 4)), 2, row_perm=[0, 0, 1, 2])


def test_registry_pivot_is_block_sparse_and_refit(layer):
    W, X, b = layer
    r = lt.solve_layer(W, X, bias=b, sparsity=0.5, method="pivot", block=4)
    rp, cp = np.array(r.settings["row_perm"]), np.array(r.settings["col_perm"])
    Mp = r.mask[rp][:, cp]
    blocks = Mp.reshape(3, 4, 8, 4).sum(axis=(1, 3))
    assert set(np.unique(blocks)) <= {0, 16}  # whole 4 x 4 blocks, in the pivoted order
    assert r.nnz == (W.size // 2 // 16) * 16
    plain = lt.solve_layer(W, X, bias=b, sparsity=0.5, method="pivot", block=4, refit=False)
    assert r.objective <= plain.objective
    # 12 x 32 at 50%: 192 weights asked, 12 whole blocks of 16 keep exactly that
    assert r.status == "solved" and r.settings["target_nnz"] == r.nnz


def test_pivot_says_when_whole_blocks_round_the_target(layer):
    W, X, b = layer
    r = lt.solve_layer(W, X, bias=b, sparsity=0.7, method="pivot", block=4)
    assert r.status == "block_rounded" and r.nnz != r.settings["target_nnz"]
    small = lt.solve_layer(W[:3, :5], X[:, :5], sparsity=0.5, method="pivot", block=16)
    assert small.status == "block_rounded" and small.sparsity == 0.0  # one block holds it all
