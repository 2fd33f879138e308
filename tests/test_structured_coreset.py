"""Coreset neuron pruning: unbiased reweighting, the (epsilon, delta) guarantee, top-k, refit."""

import numpy as np
import pytest

import layertrim as lt
from layertrim.solvers.coreset import (
    coreset_prune,
    inclusion_probabilities,
    sample_neurons,
    sample_size,
    sensitivity_data_dependent,
    sensitivity_data_independent,
)
from layertrim.solvers.structured import shrink_pair


def _pair(seed=0, n=40, d=12, n2=6, N=300):
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((n, d)) * np.exp(0.7 * rng.standard_normal((n, 1)))
    b1 = 0.3 * rng.standard_normal(n)
    W2 = rng.standard_normal((n2, n)) * np.exp(0.7 * rng.standard_normal((1, n)))
    b2 = rng.standard_normal(n2)
    X = rng.standard_normal((N, d))
    A = np.maximum(X @ W1.T + b1, 0.0)
    return W1, b1, W2, b2, X, A


def _brute_sipp(W2, A):
    """s_j = max over x, i, sign of w^sign_ij a_j / sum_k w^sign_ik a_k, by loops."""
    n2, n = W2.shape
    s = np.zeros(n)
    for a in A:
        for i in range(n2):
            for Wsign in (np.maximum(W2[i], 0), np.maximum(-W2[i], 0)):
                c = Wsign * a
                if c.sum() > 0:
                    s = np.maximum(s, c / c.sum())
    return s


def test_sipp_sensitivity_matches_its_definition():
    _, _, W2, _, _, A = _pair(N=50)
    np.testing.assert_allclose(sensitivity_data_dependent(W2, A), _brute_sipp(W2, A),
                               rtol=1e-12)


def test_data_independent_sensitivity_bounds_every_share_in_the_ball():
    W1, b1, W2, _, _, _ = _pair(1)
    radius = 3.0
    s = sensitivity_data_independent(W1, b1, W2, radius=radius)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, W1.shape[1]))
    x *= radius * rng.uniform(0, 1, (2000, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
    a = np.maximum(x @ W1.T + b1, 0)
    env = radius * np.linalg.norm(W1, axis=1) + np.abs(b1)
    U = np.abs(W2) * env
    share = np.abs(W2)[None] * a[:, None, :] / U.sum(axis=1)[None, :, None]
    assert np.all(share.max(axis=(0, 1)) <= s + 1e-12)


def test_reweighting_is_unbiased():
    W1, b1, W2, b2, _, A = _pair(3)
    a = A[:5]
    z = a @ W2.T
    reps = 3000
    acc = np.zeros_like(z)
    for seed in range(reps):
        r = coreset_prune(W1, b1, W2, b2, A=A, variant="data-dependent", epsilon=3.0,
                          delta=0.5, seed=seed)
        acc += a[:, r.kept] @ r.W2.T
        assert r.n_kept < W1.shape[0]  # sampling really drops neurons
    mean = acc / reps
    # the single-draw spread is large (the check below would fail without count / (m p_j))
    single = a[:, r.kept] @ r.W2.T
    assert np.abs(single - z).max() > 0.1 * np.abs(z).max()
    np.testing.assert_allclose(mean, z, atol=0.03 * np.abs(z).max())


def test_a_neuron_count_is_kept_exactly_and_reweighted_without_bias():
    """keep= draws exactly keep distinct neurons, each with probability pi_j (its weight is
    1 / pi_j), so every neuron's expected weight is 1. Drawing i.i.d. until keep distinct
    neurons had been seen gave expected weights 0.86-1.31 on these sensitivities."""
    sens = np.array([8.0, 2.0, 1.0, 1.0, 0.5, 0.0])
    for keep in (2, 3, 4):
        pi = inclusion_probabilities(sens, keep)
        assert pi.sum() == pytest.approx(keep) and pi.max() <= 1.0 and pi[-1] == 0.0
        reps = 20000
        weight, hits = np.zeros(6), np.zeros(6)
        rng = np.random.default_rng(keep)
        for _ in range(reps):
            kept, w, m = sample_neurons(sens, rng, keep=keep)
            assert len(kept) == len(set(kept.tolist())) == keep == m
            weight[kept] += w
            hits[kept] += 1
        np.testing.assert_allclose(hits / reps, pi, atol=0.012)  # ~4 standard errors
        np.testing.assert_allclose(weight[:5] / reps, 1.0, atol=0.06)
        assert weight[5] == 0.0


def test_nearly_irrelevant_neurons_do_not_stall_the_sampling():
    rng = np.random.default_rng(0)
    W1, W2 = rng.normal(size=(7, 4)), rng.normal(size=(3, 7))
    W2[:, 5:] *= 1e-9
    r = coreset_prune(W1, None, W2, keep=6)  # ran forever when drawing until 6 were seen
    assert r.n_kept == 6


@pytest.mark.parametrize("variant", ["data-dependent", "data-independent"])
def test_epsilon_delta_guarantee_holds_empirically(variant):
    W1, b1, W2, b2, X, A = _pair(4)
    eps, delta = 0.5, 0.1
    radius = float(np.linalg.norm(X, axis=1).max())
    env = radius * np.linalg.norm(W1, axis=1) + np.abs(b1)
    fails, errors = 0, []
    for trial in range(200):
        r = coreset_prune(W1, b1, W2, b2, A=A, variant=variant, epsilon=eps, delta=delta,
                          seed=1000 + trial, radius=radius)
        a = A[trial % A.shape[0]]
        z, zhat = W2 @ a, r.W2 @ a[r.kept]
        S = np.abs(W2) @ a if variant == "data-dependent" else np.abs(W2) @ env
        err = np.max(np.abs(z - zhat) / S)
        errors.append(err)
        fails += err > eps
    assert fails / 200 <= delta
    assert max(errors) > 0.01 * eps  # not vacuous: the reweighted outputs do move
    assert r.n_samples == sample_size(r.settings["t"], eps, delta, W2.shape[0])


def test_sample_size_grows_with_t_and_shrinks_with_epsilon():
    assert sample_size(10, 0.1, 0.1) > sample_size(10, 0.2, 0.1) > sample_size(5, 0.2, 0.1)
    assert sample_size(10, 0.1, 0.01) > sample_size(10, 0.1, 0.1)
    assert sample_size(4.0, 1.0, 0.5) == int(np.ceil(2 * 4 * (4 / 3) * np.log(4.0)))


@pytest.mark.parametrize("variant", ["data-dependent", "data-independent"])
def test_deterministic_variant_keeps_the_top_sensitivity_neurons(variant):
    W1, b1, W2, b2, _, A = _pair(5)
    r = coreset_prune(W1, b1, W2, b2, A=A, variant=variant, keep=11, deterministic=True,
                      radius=2.0)
    s = _brute_sipp(W2, A) if variant == "data-dependent" else \
        sensitivity_data_independent(W1, b1, W2, radius=2.0)
    assert set(r.kept) == set(np.argsort(-s)[:11])
    assert r.n_kept == 11 and np.all(r.scale == 1)
    # the row rescale: W2k = c_i W2[:, kept], c_i the least-squares scalar per next neuron
    Z, Zk = A @ W2.T, A[:, r.kept] @ W2[:, r.kept].T
    c = r.W2[:, 0] / W2[:, r.kept[0]]
    np.testing.assert_allclose(r.W2, W2[:, r.kept] * c[:, None])
    np.testing.assert_allclose(np.sum((Z - Zk * c) * Zk, axis=0), 0, atol=1e-8 * np.abs(Z).sum())
    none = coreset_prune(W1, b1, W2, b2, A=A, variant=variant, keep=11, deterministic=True,
                         radius=2.0, rescale="none")
    assert np.array_equal(none.W2, W2[:, r.kept]) and none.rel_error > r.rel_error


@pytest.mark.parametrize("variant", ["data-dependent", "data-independent"])
def test_refit_beats_plain_reweighting(variant):
    W1, b1, W2, b2, X, A = _pair(6, N=600)
    for keep in (5, 10, 20):
        plain = coreset_prune(W1, b1, W2, b2, A=A, variant=variant, keep=keep, seed=keep)
        fit = coreset_prune(W1, b1, W2, b2, A=A, variant=variant, keep=keep, seed=keep,
                            refit=True)
        assert np.array_equal(plain.kept, fit.kept)
        assert fit.rel_error < 0.9 * plain.rel_error
    # and on inputs the refit never saw
    rng = np.random.default_rng(7)
    At = np.maximum(rng.standard_normal((500, X.shape[1])) @ W1.T + b1, 0)
    Z = At @ W2.T + b2
    e_plain = np.sum((At[:, plain.kept] @ plain.W2.T + plain.b2 - Z) ** 2)
    e_fit = np.sum((At[:, fit.kept] @ fit.W2.T + fit.b2 - Z) ** 2)
    assert e_fit < e_plain


def test_keep_count_is_exact_and_results_shrink():
    W1, b1, W2, b2, _, A = _pair(8)
    for keep in (1, 7, 40):
        r = coreset_prune(W1, b1, W2, b2, A=A, variant="data-dependent", keep=keep)
        assert r.n_kept == keep and r.W1.shape == (keep, W1.shape[1])
        assert r.W2.shape == (W2.shape[0], keep) and np.all(np.diff(r.kept) > 0)
    r = coreset_prune(W1, b1, W2, b2, keep=0.25)
    assert r.n_kept == 10 and r.rel_error is None
    # the numpy shrink reproduces the result's smaller layers from kept + scale
    W1k, b1k, W2k, b2k = shrink_pair(W1, b1, W2, b2, r.kept, r.scale)
    np.testing.assert_array_equal(W1k, r.W1)
    np.testing.assert_array_equal(b1k, r.b1)
    np.testing.assert_allclose(W2k, r.W2)
    np.testing.assert_array_equal(b2k, b2)


def test_registry_coreset_removes_whole_columns(layer):
    W, X, b = layer
    for opts in ({}, {"variant": "data-dependent"}, {"deterministic": True}):
        r = lt.solve_layer(W, X, bias=b, sparsity=0.75, method="coreset", **opts)
        cols = r.mask.any(axis=0)
        assert cols.sum() == 8 and np.all(r.mask[:, cols])
        assert r.settings["kept"] == list(np.flatnonzero(cols))
    plain = lt.solve_layer(W, X, bias=b, sparsity=0.75, method="coreset", seed=3)
    fit = lt.solve_layer(W, X, bias=b, sparsity=0.75, method="coreset", seed=3, refit=True)
    assert np.array_equal(plain.mask, fit.mask) and fit.objective < plain.objective


@pytest.mark.parametrize("method", ["coreset", "global-threshold", "taylor"])
def test_column_counts_round_half_up_and_say_when_they_miss(method):
    """Whole columns of m weights cannot hold every count: 10 weights of a 4-row layer is 2.5
    columns, kept as 3 (half up, as the engine rounds; Python's round gave 2) with status
    column_rounded; 12 weights are 3 columns exactly."""
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((4, 10)), rng.standard_normal((50, 10))
    r = lt.solve_layer(W, X, nnz=10, method=method)
    assert r.mask.any(axis=0).sum() == 3 and r.status == "column_rounded"
    assert r.settings["target_nnz"] == 10
    r = lt.solve_layer(W, X, nnz=12, method=method)
    assert r.mask.any(axis=0).sum() == 3 and r.status == "solved"
