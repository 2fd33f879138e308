import numpy as np
import pytest

from layertrim import Gram, InvalidInputError


def test_batched_gram_equals_full_product():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((1003, 17)).astype(np.float32)
    g = Gram(17)
    for batch in np.array_split(X, 7):
        g.update(batch)
    X64 = X.astype(np.float64)
    assert g.n == 1003
    assert g.H.dtype == np.float64
    np.testing.assert_allclose(g.H, X64.T @ X64, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(g.sum, X64.sum(0), rtol=1e-12)


def test_from_data_batches_match_and_augmented_is_gram_of_ones_column():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 6))
    g = Gram.from_data(X, batch_size=7)
    Xa = np.hstack([X, np.ones((50, 1))])
    np.testing.assert_allclose(g.augmented(), Xa.T @ Xa, rtol=1e-12, atol=1e-12)


def test_cross_term_accumulates_x_transpose_x0():
    rng = np.random.default_rng(2)
    X, X0 = rng.standard_normal((40, 5)), rng.standard_normal((40, 8))
    g = Gram(5, d0=8)
    for a, b in zip(np.array_split(X, 3), np.array_split(X0, 3), strict=True):
        g.update(a, b)
    np.testing.assert_allclose(g.cross, X.T @ X0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.sum0, X0.sum(0), rtol=1e-12)


def test_gram_memory_is_independent_of_n():
    g = Gram(4)
    for _ in range(100):
        g.update(np.ones((1000, 4)))
    held = [v for v in vars(g).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in held) <= 8 * (4 * 4 + 4)
    assert g.n == 100_000


@pytest.mark.parametrize(
    "bad, msg",
    [
        (np.ones((3, 5)), "columns"),
        (np.full((3, 4), np.nan), "NaN"),
        (np.ones((2, 2, 4)), "2-D"),
    ],
)
def test_gram_rejects_bad_batches(bad, msg):
    with pytest.raises(InvalidInputError, match=msg):
        Gram(4).update(bad)


def test_cross_term_needs_paired_batches():
    g = Gram(3, d0=3)
    with pytest.raises(InvalidInputError, match="X0"):
        g.update(np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="rows"):
        g.update(np.ones((2, 3)), np.ones((3, 3)))


def test_an_overflowing_batch_is_refused_and_leaves_the_state_intact():
    g = Gram(3, d0=3)
    g.update(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(InvalidInputError, match="overflows"):
        g.update(np.full((2, 3), 1e200), np.ones((2, 3)))
    assert g.n == 2 and np.all(g.H == 2) and np.all(g.cross == 2)


def test_ragged_batch_and_single_sample():
    with pytest.raises(InvalidInputError, match="rectangular"):
        Gram(2).update([[1.0, 2.0], [3.0]])
    assert Gram(2).update([1.0, 2.0]).n == 1


def test_add_stats_equals_update_and_checks_its_input():
    rng = np.random.default_rng(0)
    X, X0 = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))
    a = Gram(4, 4).update(X[:20], X0[:20]).update(X[20:], X0[20:])
    b = Gram(4, 4)
    for sl in (slice(0, 20), slice(20, 50)):
        b.add_stats(X[sl].T @ X[sl], X[sl].sum(0), 30 if sl.start else 20,
                    X[sl].T @ X0[sl], X0[sl].sum(0))
    np.testing.assert_allclose(a.H, b.H)
    np.testing.assert_allclose(a.cross, b.cross)
    np.testing.assert_allclose(a.sum0, b.sum0)
    assert a.n == b.n == 50
    with pytest.raises(InvalidInputError, match="do not fit"):
        Gram(3).add_stats(np.eye(4), np.zeros(4), 1)
    with pytest.raises(InvalidInputError, match="cross term"):
        Gram(3).add_stats(np.eye(3), np.zeros(3), 1, cross=np.eye(3))
    with pytest.raises(InvalidInputError, match="NaN"):
        Gram(3).add_stats(np.full((3, 3), np.nan), np.zeros(3), 1)


def test_add_stats_adopts_only_into_an_empty_gram():
    """adopt keeps the caller's contiguous arrays in a fresh Gram, and adds as before once
    anything was added (a batch of rows or another batch's statistics)."""
    rng = np.random.default_rng(1)
    X, X0 = rng.standard_normal((30, 4)), rng.standard_normal((30, 4))
    H, C = X.T @ X, X.T @ X0
    g = Gram(4, 4).add_stats(H, X.sum(0), 30, C, X0.sum(0), adopt=True)
    assert np.shares_memory(g.H, H) and np.shares_memory(g.cross, C)
    g.add_stats(H.copy(), X.sum(0), 30, C.copy(), X0.sum(0), adopt=True)  # not empty: a sum
    np.testing.assert_allclose(g.H, 2 * X.T @ X)
    np.testing.assert_allclose(g.cross, 2 * X.T @ X0)
    assert g.n == 60 and np.shares_memory(g.H, H) is False
    u = Gram(4).update(X)
    u.add_stats(H, X.sum(0), 30, adopt=True)
    np.testing.assert_allclose(u.H, 2 * H)
    wide = np.zeros((4, 6))
    wide[:, :4] = H
    v = Gram(4).add_stats(wide[:, :4], X.sum(0), 30, adopt=True)  # strided: copied
    assert not np.shares_memory(v.H, wide)
    np.testing.assert_array_equal(v.H, H)
    with pytest.raises(InvalidInputError, match="NaN"):
        Gram(3).add_stats(np.full((3, 3), np.inf), np.zeros(3), 1, adopt=True)


def test_objective_is_never_negative_from_rounding():
    """A weight change in H's null space (an input that is a combination of two others) has
    zero error; the quadratic form rounds to about +-1e-15 there, and the negative half is
    reported as 0, not as a negative relative error."""
    from layertrim.problem import LayerProblem

    rng = np.random.default_rng(1)  # a seed whose rounding goes below zero
    X = rng.standard_normal((40, 3))
    X = np.hstack([X, X[:, :1] + 0.3 * X[:, 1:2]])
    W0 = rng.standard_normal((5, 4))
    p = LayerProblem.create(W0, X, sparsity=0.5)
    vals = []
    for t in np.linspace(1e-9, 1.0, 50):
        W = W0.copy()
        W[:, 0] += t
        W[:, 1] += 0.3 * t
        W[:, 3] -= t  # the same output on every row
        vals.append(p.objective(W))
    assert min(vals) >= 0.0 and vals.count(0.0) > 5  # rounded below zero for some t
    assert max(vals) < 1e-12 * p.reference_energy()


def test_a_nan_objective_stays_nan():
    """Weights that blew up must not read as a perfect layer."""
    from layertrim.problem import LayerProblem

    p = LayerProblem.create(np.ones((2, 3)), np.ones((4, 3)), sparsity=0.5)
    assert np.isnan(p.objective(np.full((2, 3), np.nan)))


def test_holding_keeps_the_arrays_and_checks_them():
    """Gram.holding (the end of a calibration) keeps the given float64 arrays themselves, and
    refuses a wrong shape, layout or dtype and a NaN anywhere (H's own check is skipped only
    when the caller says it ran one)."""
    rng = np.random.default_rng(0)
    X, X0 = rng.standard_normal((30, 4)), rng.standard_normal((30, 3))
    H, C = X.T @ X, X.T @ X0
    g = Gram.holding(H, X.sum(0), 30, C, X0.sum(0))
    assert g.H is H and g.cross is C and (g.d, g.d0, g.n) == (4, 3, 30)
    ref = Gram(4, 3).update(X, X0)
    np.testing.assert_allclose(g.augmented(), ref.augmented(), rtol=1e-12)
    np.testing.assert_allclose(g.cross, ref.cross, rtol=1e-12)
    assert Gram.holding(H, X.sum(0), 30).cross is None
    with pytest.raises(InvalidInputError, match="C-contiguous float64"):
        Gram.holding(H.astype(np.float32), X.sum(0), 30)
    with pytest.raises(InvalidInputError, match="C-contiguous float64"):
        Gram.holding(np.asfortranarray(H[:, :3][:3]), X.sum(0)[:3], 30)
    with pytest.raises(InvalidInputError, match="C-contiguous float64"):
        Gram.holding(H, X.sum(0)[:3], 30)
    with pytest.raises(InvalidInputError, match="cross term"):
        Gram.holding(H, X.sum(0), 30, C[:3], X0.sum(0))
    bad = H.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        Gram.holding(bad, X.sum(0), 30)
    assert Gram.holding(bad, X.sum(0), 30, finite=True).H is bad  # the caller checked
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        Gram.holding(H, np.full(4, np.inf), 30)
    with pytest.raises(InvalidInputError, match="NaN or Inf"):
        Gram.holding(H, X.sum(0), 30, C, np.full(3, np.nan))
