"""l0-general: IHT with line search on ||sigma(X W^T + b) - Y||^2 (Phan et al., ICDM 2020).

Losses and gradients are recomputed here independently of the solver's own code.
"""

import numpy as np
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st

from layertrim import LayerProblem
from layertrim.errors import InvalidInputError
from layertrim.solvers import run
from layertrim.solvers.activations import NAMED, resolve_activation
from layertrim.solvers.l0_general import loss_and_grad  # importing registers "l0-general"
from layertrim.solvers.masks import is_valid_mask

from .conftest import correlated_inputs

NONLINEAR = ["relu", "tanh", "sigmoid", "gelu"]
# the least-squares start: sparsegpt's mask with the exact refit ("l0-admm" is the default)
INIT = "sparsegpt"


def sig(name):
    return resolve_activation(name, "linear")[1]


def nonlinear_loss(X, W, b, W0, b0, sigma):
    """||sigma(X W^T + b) - sigma(X W0^T + b0)||_F^2, straight from the definition."""
    Z = X @ W.T + (0.0 if b is None else b)
    Z0 = X @ W0.T + (0.0 if b0 is None else b0)
    return float(np.sum((sigma(Z) - sigma(Z0)) ** 2))


def fd_gradient(X, Y, W, b, sigma, h=1e-6):
    """Central finite differences of the loss in every entry of W and b."""

    def f(Wv, bv):
        return float(np.sum((sigma(X @ Wv.T + bv) - Y) ** 2))

    GW = np.zeros_like(W)
    for idx in np.ndindex(*W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        GW[idx] = (f(W + E, b) - f(W - E, b)) / (2 * h)
    gb = np.array([(f(W, b + h * e) - f(W, b - h * e)) / (2 * h) for e in np.eye(len(b))])
    return GW, gb


def softplus(z):
    return np.logaddexp(0.0, z)


def layer_problem(act, *, bias=True, scale=1.0, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    d, m = 32, 12
    X = correlated_inputs(200, d, seed=seed + 1)
    W = scale * rng.standard_normal((m, d)) / np.sqrt(d)
    b = rng.standard_normal(m) if bias else None
    return LayerProblem.create(W, X, bias=b, activation=act, **kwargs)


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("name", list(NAMED))
@given(z=st.lists(st.floats(-8, 8), min_size=1, max_size=30))
def test_activation_derivative_matches_central_difference(name, z):
    _, sigma, dsigma = resolve_activation(name, "linear")
    z = np.array(z)
    z = z[np.abs(z) > 1e-3]  # relu and leaky relu have a kink at 0
    h = 1e-6
    fd = (sigma(z + h) - sigma(z - h)) / (2 * h)
    np.testing.assert_allclose(dsigma(z), fd, rtol=1e-6, atol=1e-7)
    assert dsigma(z).shape == z.shape


def test_activation_values_are_the_named_functions():
    z = np.array([-2.0, 1.0])
    np.testing.assert_allclose(sig("leaky_relu")(z), [-0.02, 1.0])
    # exact erf GELU: gelu(1) = Phi(1); the tanh approximation gives 0.84119...
    assert sig("gelu")(np.array([1.0]))[0] == pytest.approx(0.8413447460685429, abs=1e-15)
    with np.errstate(all="raise"):  # the stable sigmoid neither overflows nor warns
        s = sig("sigmoid")(np.array([-1000.0, 0.0, 1000.0]))
    np.testing.assert_array_equal(s, [0.0, 0.5, 1.0])


def test_activation_spec_errors():
    with pytest.raises(InvalidInputError, match="derivative"):
        resolve_activation(np.tanh, "linear")
    with pytest.raises(InvalidInputError, match="derivative"):
        resolve_activation((np.tanh, "not callable"), "linear")
    with pytest.raises(InvalidInputError, match="derivative"):
        resolve_activation(None, "other")
    with pytest.raises(InvalidInputError, match="unknown activation.*tanh.*gelu"):
        resolve_activation("swish", "linear")
    name, s, ds = resolve_activation((softplus, scipy.special.expit), "other")
    assert name == "other" and s is softplus


# ---------------------------------------------------------------- the loss and its gradient


@pytest.mark.parametrize("name", list(NAMED))
def test_loss_gradient_matches_finite_differences(name):
    rng = np.random.default_rng(7)
    n, d, m = 15, 5, 3
    X = rng.standard_normal((n, d))
    Y = sig(name)(X @ rng.standard_normal((m, d)).T)
    W, b = rng.standard_normal((m, d)), rng.standard_normal(m)
    loss, GW, gb = loss_and_grad(X, Y, W, b, name)
    assert loss == pytest.approx(float(np.sum((sig(name)(X @ W.T + b) - Y) ** 2)), rel=1e-12)
    GW_fd, gb_fd = fd_gradient(X, Y, W, b, sig(name))
    np.testing.assert_allclose(GW, GW_fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gb, gb_fd, rtol=1e-5, atol=1e-6)
    assert loss_and_grad(X, Y, W, None, name)[2] is None


# ---------------------------------------------------------------- the solver


@pytest.mark.parametrize("act", NONLINEAR)
@pytest.mark.parametrize("target", [{"sparsity": 0.5}, {"sparsity": 0.9}, {"pattern": "2:4"}])
def test_loss_not_above_init_and_mask_exact(act, target):
    P = layer_problem(act, **target)
    X, W0, b0, sigma = P.X, P.W0, P.bias, sig(act)
    start = run(P, INIT, refit=True)
    loss_start = nonlinear_loss(X, start.W, start.bias, W0, b0, sigma)
    r = run(P, "l0-general", init=INIT)
    loss = nonlinear_loss(X, r.W, r.bias, W0, b0, sigma)
    assert r.certificate["loss_init"] == pytest.approx(loss_start, rel=1e-10)
    assert r.certificate["loss"] == pytest.approx(loss, rel=1e-10)
    assert loss <= loss_start * (1 + 1e-12)
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    assert r.nnz == P.nnz == int(r.mask.sum())
    assert np.all(r.W[~r.mask] == 0)
    assert r.solver == "l0-general" and r.settings["activation"] == act
    losses = [h["loss"] for h in r.history]
    assert np.all(np.diff(losses) <= 0), "an accepted IHT step raised L"
    assert r.certificate["rel_loss"] == pytest.approx(loss / np.sum(sigma(X @ W0.T + b0) ** 2))


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_refit_reaches_stationarity_on_the_support(act, bias):
    P = layer_problem(act, bias=bias, sparsity=0.6, seed=3)
    X = P.X
    Z0 = X @ P.W0.T + (0.0 if P.bias is None else P.bias)
    Y = sig(act)(Z0)
    before = run(P, "l0-general", init=INIT, refit=False)
    r = run(P, "l0-general", init=INIT, refit=True)
    assert (r.bias is None) == (not bias)
    assert np.all(r.W[~r.mask] == 0)

    def support_grad(res):
        b = res.bias if bias else np.zeros(P.m)
        _, GW, gb = loss_and_grad(X, Y, res.W, b, act)
        return np.concatenate([GW[res.mask], gb if bias else []])

    g = np.linalg.norm(support_grad(r))
    Xa = np.hstack([X, np.ones((len(X), 1))]) if bias else X
    scale = 2 * np.linalg.norm(Y) * np.linalg.norm(Xa, 2)
    assert g <= 1e-7 * scale
    assert g <= 1e-3 * np.linalg.norm(support_grad(before))
    assert r.certificate["grad_norm_on_support"] == pytest.approx(g, rel=1e-6, abs=1e-12)
    assert r.certificate["loss"] <= before.certificate["loss"]


@pytest.mark.parametrize("start", ["zeros", "dense-random", "random"])
def test_planted_sparse_tanh_layer_is_recovered(start):
    rng = np.random.default_rng(11)
    n, d, m = 200, 32, 12
    k = m * d // 4
    X = rng.standard_normal((n, d))
    W0 = np.zeros((m, d))
    support = rng.choice(m * d, k, replace=False)
    W0.flat[support] = rng.choice([-1, 1], k) * rng.uniform(0.5, 1.5, k) / np.sqrt(d / 4)
    b0 = 0.3 * rng.standard_normal(m)
    P = LayerProblem.create(W0, X, bias=b0, nnz=k, activation="tanh")
    init = {"zeros": np.zeros((m, d)), "dense-random": rng.standard_normal((m, d))}.get(
        start, start
    )
    r = run(P, "l0-general", init=init, max_iter=3000, tol=1e-14)
    energy = float(np.sum(np.tanh(X @ W0.T + b0) ** 2))
    assert r.certificate["loss_init"] > 0.1 * energy  # the start is far from the answer
    assert r.certificate["loss"] <= 1e-20 * energy
    np.testing.assert_array_equal(r.mask, W0 != 0)
    np.testing.assert_allclose(r.W, W0, atol=1e-9)
    np.testing.assert_allclose(r.bias, b0, atol=1e-9)


def test_beats_the_linear_least_squares_solution_when_tanh_saturates():
    P = layer_problem("tanh", scale=6.0, sparsity=0.5, seed=5)
    Z0 = P.X @ P.W0.T + P.bias
    assert np.mean(np.abs(Z0) > 2) > 0.5  # most units are saturated
    ls = run(P, INIT, refit=True)
    r = run(P, "l0-general", init=INIT)
    loss_ls = nonlinear_loss(P.X, ls.W, ls.bias, P.W0, P.bias, np.tanh)
    loss = nonlinear_loss(P.X, r.W, r.bias, P.W0, P.bias, np.tanh)
    assert loss <= 0.7 * loss_ls
    # ... while the least-squares solution remains the better fit of the pre-activations
    assert ls.objective <= r.objective


def test_linear_activation_is_iht_on_least_squares():
    P = layer_problem("linear", sparsity=0.9)
    ls = run(P, INIT, refit=True)
    r = run(P, "l0-general", init=INIT)
    # for sigma = identity the nonlinear loss is exactly the H-based objective
    assert r.certificate["loss"] == pytest.approx(r.objective, rel=1e-9)
    assert r.certificate["loss_init"] == pytest.approx(ls.objective, rel=1e-9)
    assert r.objective <= ls.objective


def test_user_pair_and_its_named_twin():
    P = layer_problem("other", sparsity=0.5)
    start = run(P, INIT, refit=True)
    r = run(P, "l0-general", init=start, activation=(softplus, scipy.special.expit))
    loss_start = nonlinear_loss(P.X, start.W, start.bias, P.W0, P.bias, softplus)
    loss = nonlinear_loss(P.X, r.W, r.bias, P.W0, P.bias, softplus)
    assert r.settings["activation"] == "other"
    assert loss <= loss_start and r.certificate["loss"] == pytest.approx(loss, rel=1e-10)
    assert is_valid_mask(r.mask, P.pattern, P.nnz)

    Pt = layer_problem("tanh", sparsity=0.5)
    named = run(Pt, "l0-general", init=INIT)
    pair = run(Pt, "l0-general", init=INIT, activation=(np.tanh, lambda z: 1 - np.tanh(z) ** 2))
    np.testing.assert_array_equal(named.mask, pair.mask)
    np.testing.assert_allclose(named.W, pair.W, rtol=1e-6, atol=1e-9)


def test_bad_input_is_rejected():
    P = layer_problem("tanh", sparsity=0.5)
    with pytest.raises(InvalidInputError, match="derivative"):
        run(P, "l0-general", init=INIT, activation=np.tanh)
    with pytest.raises(InvalidInputError, match="derivative"):
        run(layer_problem("other", sparsity=0.5), "l0-general", init=INIT)
    with pytest.raises(InvalidInputError, match="unknown activation"):
        run(P, "l0-general", init=INIT, activation="swish")
    with pytest.raises(InvalidInputError, match="elementwise"):
        run(P, "l0-general", init=INIT, activation=(lambda z: z.sum(), np.ones_like))
    with pytest.raises(InvalidInputError, match="itself"):
        run(P, "l0-general", init="l0-general")
    with pytest.raises(InvalidInputError, match="shape"):
        run(P, "l0-general", init=np.zeros((3, 3)))
    with pytest.raises(InvalidInputError, match="max_iter"):
        run(P, "l0-general", init=INIT, max_iter=-1)
    no_x = LayerProblem.create(P.W0, gram=P.X.T @ P.X, sparsity=0.5, activation="tanh")
    with pytest.raises(InvalidInputError, match="needs the per-sample inputs X"):
        run(no_x, "l0-general", init=INIT)


def test_time_budget_stops_early_with_a_valid_mask():
    P = layer_problem("tanh", sparsity=0.7)
    r = run(P, "l0-general", init=INIT, time_budget=1e-9)
    assert r.status == "time_budget" and r.iterations == 0
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    assert r.certificate["loss"] <= r.certificate["loss_init"]
