"""Property tests of the pattern projections."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from layertrim.pattern import Pattern
from layertrim.solvers.masks import (
    is_valid_mask,
    layer_topk,
    nm_topk,
    project_mask,
    row_topk,
    split_count,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False)


@st.composite
def score_and_k(draw):
    m = draw(st.integers(1, 7))
    d = draw(st.integers(1, 12))
    S = draw(arrays(np.float64, (m, d), elements=finite))
    k = draw(st.integers(0, m * d))
    return S, k


@given(score_and_k())
def test_layer_topk_keeps_exactly_k_and_the_largest(sk):
    S, k = sk
    mask = layer_topk(S, k)
    assert mask.sum() == k
    if 0 < k < S.size:
        assert S[mask].min() >= S[~mask].max()


@given(score_and_k())
def test_row_topk_keeps_k_per_row_and_the_largest_of_each_row(sk):
    S, k = sk
    kr = k % (S.shape[1] + 1)
    mask = row_topk(S, kr)
    assert np.all(mask.sum(1) == kr)
    for i in range(S.shape[0]):
        if 0 < kr < S.shape[1]:
            assert S[i, mask[i]].min() >= S[i, ~mask[i]].max()


@given(
    st.sampled_from([(1, 2), (2, 4), (1, 4), (4, 8), (3, 4)]),
    st.integers(1, 5),
    st.integers(1, 4),
    st.data(),
)
def test_nm_topk_is_a_valid_nm_mask_keeping_each_groups_largest(nm, m, groups, data):
    n, M = nm
    S = data.draw(arrays(np.float64, (m, groups * M), elements=finite))
    mask = nm_topk(S, n, M)
    assert is_valid_mask(mask, Pattern("nm", n, M), m * groups * n)
    G, Mk = S.reshape(m, groups, M), mask.reshape(m, groups, M)
    for i in range(m):
        for g in range(groups):
            if n < M:
                assert G[i, g][Mk[i, g]].min() >= G[i, g][~Mk[i, g]].max()


@given(score_and_k())
def test_projection_is_idempotent(sk):
    """Projecting the kept weights again keeps the same support."""
    S, k = sk
    pat = Pattern("layer")
    mask = project_mask(np.abs(S), pat, k)
    W = np.where(mask, S, 0.0)
    again = project_mask(np.abs(W) + mask, pat, k)  # +mask breaks ties with pruned zeros
    assert np.array_equal(mask, again)


@settings(max_examples=200)
@given(st.integers(0, 10_000), st.integers(1, 300), st.integers(1, 64))
def test_split_count_partitions_total_exactly(total, width, block):
    parts = [split_count(total, i, min(i + block, width), width) for i in range(0, width, block)]
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)


@pytest.mark.parametrize("k", [1, 777, 600_000, 1_200_000 - 1])
def test_layer_topk_on_large_inputs_uses_the_bracket_and_stays_exact(k):
    # above 2^20 entries the threshold comes from a sampled bracket: check it against a sort,
    # with heavy ties (values on a coarse grid) so the tie-filling path runs too
    rng = np.random.default_rng(k)
    scores = np.round(np.abs(rng.standard_normal((1000, 1200))) * 8) / 8
    mask = layer_topk(scores, k)
    assert mask.sum() == k
    kth = np.sort(scores, axis=None)[::-1][k - 1]
    assert scores[mask].min() >= kth >= scores[~mask].max()
    # ties at the threshold go to the lowest flat indices
    tied = np.flatnonzero(scores.ravel() == kth)
    kept_tied = mask.ravel()[tied]
    assert np.all(np.diff(kept_tied.astype(int)) <= 0)


def test_a_decimal_half_rounds_up_whatever_its_binary_value():
    from layertrim.problem import LayerProblem

    rng = np.random.default_rng(0)
    for s in (0.145, 0.285, 0.565, 0.575):  # s * 100 is a hair below the half in binary
        p = LayerProblem.create(rng.standard_normal((1, 100)), rng.standard_normal((5, 100)),
                                sparsity=s)
        assert 100 - p.nnz == int(s * 1000 + 5) // 10  # 14.5 -> 15 pruned, as typed
