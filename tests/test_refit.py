"""refit is the exact least-squares optimum on the mask: checked against numpy lstsq."""

import numpy as np
import pytest

from layertrim import LayerProblem, refit
from layertrim.solvers.masks import layer_topk


def lstsq_on_support(X, W0, mask, b0=None):
    """Independent reference: per row, least squares of X_S w_S (+ b) against X w0 (+ b0)."""
    n = X.shape[0]
    Z0 = X @ W0.T + (0 if b0 is None else b0)
    W = np.zeros_like(W0)
    b = None if b0 is None else np.zeros_like(b0)
    for i in range(W0.shape[0]):
        A = X[:, mask[i]]
        if b0 is not None:
            A = np.hstack([A, np.ones((n, 1))])
        sol = np.linalg.lstsq(A, Z0[:, i], rcond=None)[0]
        if b0 is not None:
            b[i], sol = sol[-1], sol[:-1]
        W[i, mask[i]] = sol
    return W, b


@pytest.mark.parametrize("form", ["support", "complement", "auto"])
@pytest.mark.parametrize("sparsity", [0.2, 0.5, 0.8])
def test_refit_equals_lstsq_on_support(layer, form, sparsity):
    W, X, _ = layer
    rng = np.random.default_rng(3)
    mask = layer_topk(rng.random(W.shape), W.size - int(round(sparsity * W.size)))
    P = LayerProblem.create(W, X, sparsity=sparsity)
    r = refit(P, mask, damp=0.0, form=form)
    W_ref, _ = lstsq_on_support(X, W, mask)
    np.testing.assert_allclose(r.W, W_ref, rtol=1e-7, atol=1e-8)
    assert np.all(r.W[~mask] == 0)


@pytest.mark.parametrize("form", ["support", "complement"])
def test_refit_with_bias_updates_the_bias_like_lstsq(layer, form):
    W, X, b = layer
    X = X + 3.0  # a nonzero input mean, so the bias has to move
    mask = layer_topk(np.abs(W), W.size // 3)
    P = LayerProblem.create(W, X, bias=b, nnz=W.size // 3)
    r = refit(P, mask, damp=0.0, form=form)
    W_ref, b_ref = lstsq_on_support(X, W, mask, b)
    np.testing.assert_allclose(r.W, W_ref, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(r.bias, b_ref, rtol=1e-7, atol=1e-8)


def test_refit_beats_every_other_weight_choice_on_its_mask(layer):
    """Optimality (first-order/KKT): the gradient of the objective vanishes on the support."""
    W, X, _ = layer
    mask = layer_topk(np.abs(W), W.size // 2)
    P = LayerProblem.create(W, X, sparsity=0.5)
    r = refit(P, mask, damp=0.0)
    grad = 2 * (r.W - W) @ P.H
    scale = np.abs(2 * W @ P.H).max()
    assert np.abs(grad[mask]).max() < 1e-9 * scale
    assert r.objective <= LayerProblem.create(W, X, sparsity=0.5).objective(W * mask)


def test_refit_survives_dead_inputs_and_n_smaller_than_d():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((10, 30))
    X[:, :5] = 0.0  # dead inputs: H is singular
    W = rng.standard_normal((4, 30))
    P = LayerProblem.create(W, X, sparsity=0.5)
    mask = layer_topk(np.abs(W), 60)
    r = refit(P, mask)
    assert np.all(np.isfinite(r.W))
    # with n < d, the kept weights can reproduce the outputs almost exactly
    assert r.rel_error < 1e-6


def test_refit_rows_with_every_weight_pruned(layer):
    W, X, _ = layer
    mask = np.ones(W.shape, dtype=bool)
    mask[0] = False
    mask[3, :30] = False
    P = LayerProblem.create(W, X, nnz=int(mask.sum()))
    r = refit(P, mask, damp=0.0)
    W_ref, _ = lstsq_on_support(X, W, mask)
    assert np.all(r.W[0] == 0)
    np.testing.assert_allclose(r.W, W_ref, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e4])
def test_refit_with_bias_is_least_squares_at_any_input_scale(scale):
    """The ridge is relative to the inputs and never touches the (always kept) bias."""
    rng = np.random.default_rng(11)
    X = scale * (rng.standard_normal((300, 20)) + 0.5)
    W, b = rng.standard_normal((6, 20)), rng.standard_normal(6)
    mask = layer_topk(np.abs(W), 50)
    P = LayerProblem.create(W, X, bias=b, nnz=50)
    r = refit(P, mask)
    W_ref, b_ref = lstsq_on_support(X, W, mask, b)
    ref_obj = P.objective(np.hstack([W_ref, b_ref[:, None]]))
    assert r.objective <= ref_obj * (1 + 1e-6)


def test_refit_without_damping_on_rank_deficient_data_is_refused_or_exact():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((3, 8))  # n < d
    W = rng.standard_normal((4, 8))
    mask = layer_topk(np.abs(W), 24)
    P = LayerProblem.create(W, X, nnz=24)
    try:
        r = refit(P, mask, damp=0.0)
    except ValueError as e:
        assert "singular" in str(e)
    else:
        assert 0 <= r.rel_error < 1e-8
