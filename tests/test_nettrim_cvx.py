"""Net-Trim reference (cvxpy) and the parallel/cascade rules."""

import numpy as np
import pytest

import layertrim as lt
from layertrim.errors import InvalidInputError
from layertrim.solvers.nettrim_rules import cascade_rule, parallel_rule

from .conftest import correlated_inputs


@pytest.fixture(scope="module")
def relu_layer():
    rng = np.random.default_rng(0)
    d, m, n = 16, 6, 120
    X = correlated_inputs(n, d, seed=1)
    return rng.standard_normal((m, d)), X, 0.3 * rng.standard_normal(m)


def augment(X):
    return np.hstack([X, np.ones((len(X), 1))])


def feasible(Xa, W, t, tol=1e-9):
    Z = Xa @ W.T
    fit = Z - t.Y if t.omega is None else np.where(t.omega, Z - t.Y, 0.0)
    norm = np.linalg.norm(fit, axis=0) if np.ndim(t.eps) == 1 else np.linalg.norm(fit)
    ok = bool(np.all(norm <= np.asarray(t.eps) * (1 + tol) + tol))
    if t.omega is not None:
        ok &= bool(np.all(Z[~t.omega] <= t.V[~t.omega] + tol))
    return ok


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("relu", [True, False])
def test_w0_is_feasible_under_both_rules(seed, relu):
    rng = np.random.default_rng(seed)
    X = correlated_inputs(80, 10, seed=seed)
    W0a = rng.standard_normal((5, 11))
    Xa = augment(X)
    for tol in (0.0, 0.1):
        assert feasible(Xa, W0a, parallel_rule(Xa, W0a, relu, 0.05, omega_tol=tol))
    # cascade: the input has drifted (a pruned upstream network), the target is the original
    Xa_hat = Xa + 0.05 * rng.standard_normal(Xa.shape) * np.r_[np.ones(10), 0]
    Y = np.maximum(Xa @ W0a.T, 0) if relu else Xa @ W0a.T
    t = cascade_rule(Xa_hat, W0a, Y, relu)
    assert feasible(Xa_hat, W0a, t)
    assert np.max(t.eps) > 0
    for tol in (0.0, 0.1):  # per neuron: every neuron's own radius holds W0
        tp = parallel_rule(Xa, W0a, relu, 0.05, omega_tol=tol, per_neuron=True)
        assert np.shape(tp.eps) == (5,) and feasible(Xa, W0a, tp)
    tn = cascade_rule(Xa_hat, W0a, Y, relu, per_neuron=True)
    assert np.shape(tn.eps) == (5,) and feasible(Xa_hat, W0a, tn)
    # the per-neuron radii are the whole-layer radius split by neuron
    assert np.linalg.norm(tn.eps) == pytest.approx(t.eps, rel=1e-12)


@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_clarabel_and_scs_agree_and_the_solution_is_feasible(relu_layer, activation):
    W, X, b = relu_layer
    r = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation=activation, gain=0.1)
    s = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation=activation, gain=0.1,
                       solver="SCS")
    assert r.certificate["l1"] == pytest.approx(s.certificate["l1"], rel=1e-4)
    assert r.certificate["omega_violation_rel"] <= 1e-5
    assert r.certificate["off_omega_max_violation"] <= 1e-6
    assert r.certificate["l1"] < np.abs(W).sum()  # W0 is feasible, and not optimal
    assert 0 < r.sparsity < 1 and np.all(r.W[~r.mask] == 0)


def test_linear_layer_with_a_radius_beyond_the_output_prunes_everything():
    rng = np.random.default_rng(2)
    X, W = rng.standard_normal((50, 8)), rng.standard_normal((3, 8))
    Z0 = X @ W.T
    r = lt.solve_layer(W, X, method="nettrim-cvx", activation="linear",
                       eps=1.0001 * np.linalg.norm(Z0))
    assert r.nnz == 0 and r.certificate["l1"] == pytest.approx(0, abs=1e-6)
    r = lt.solve_layer(W, X, method="nettrim-cvx", activation="linear",
                       eps=0.5 * np.linalg.norm(Z0))
    assert r.nnz > 0


def test_larger_gain_prunes_more(relu_layer):
    W, X, b = relu_layer
    s = [lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=g).sparsity
         for g in (0.01, 0.05, 0.2)]
    assert s[0] <= s[1] <= s[2] and s[2] > s[0]


@pytest.mark.parametrize("target", [0.5, 0.7])
def test_target_sparsity_is_hit_within_one_percent(relu_layer, target):
    W, X, b = relu_layer
    r = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu",
                       target_sparsity=target)
    assert abs(r.sparsity - target) <= 0.01 + 1e-12
    assert r.certificate["omega_violation_rel"] <= 1e-5


def test_per_neuron_radii(relu_layer):
    W, X, b = relu_layer
    r = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1,
                       per_neuron=True)
    assert isinstance(r.certificate["eps"], list) and len(r.certificate["eps"]) == W.shape[0]
    assert r.certificate["omega_violation_rel"] <= 1e-5


def test_refit_keeps_the_support_and_constraints_and_fits_better(relu_layer):
    W, X, b = relu_layer
    plain = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1,
                         refit=True)
    np.testing.assert_array_equal(plain.mask, ref.mask)
    assert ref.certificate["omega_violation_rel"] <= 1e-5
    assert ref.certificate["off_omega_max_violation"] <= 1e-6
    assert ref.rel_error < plain.rel_error


def test_bad_input(relu_layer):
    W, X, b = relu_layer
    n, m = X.shape[0], W.shape[0]
    cases = [({"gain": 0}, "gain"), ({"gain": -1}, "gain"),
             ({"target_sparsity": 1.0}, "target_sparsity"),
             ({"target_sparsity": 0}, "target_sparsity"),
             ({"Y": -np.ones((n, m))}, "no positive entry"),
             ({"Y": np.full((n, m), np.nan)}, "NaN"),
             ({"Y": np.ones((n + 1, m))}, "shape mismatch"),
             ({"solver": "GUROBI"}, "solver"),
             ({"solver": "OSQP"}, "solver"),  # a QP solver: the ε-ball is a cone
             ({"eps": np.nan}, "eps must be a finite"),
             ({"omega_tol": -1.0}, "omega_tol"), ({"zero_tol": -1.0}, "zero_tol"),
             ({"target_sparsity": 0.5, "max_bisect": 0}, "max_bisect")]
    for opts, words in cases:
        with pytest.raises(InvalidInputError, match=words):
            lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", **opts)
    with pytest.raises(InvalidInputError, match="calibration inputs X"):
        lt.solve_layer(W, gram=X.T @ X, method="nettrim-cvx", activation="relu")
    with pytest.raises(InvalidInputError, match="no positive entry"):
        lt.solve_layer(-np.abs(W), np.abs(X), method="nettrim-cvx", activation="relu")
    with pytest.raises(InvalidInputError, match="missing sparsity target"):
        lt.solve_layer(W, X, method="l0-admm")  # top-k solvers still need a target


def test_an_inaccurate_reference_solve_is_labelled():
    # Clarabel's "optimal_inaccurate" on inputs of 1e-6 left W 580% outside the ball
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((60, 8)), rng.standard_normal((3, 8))
    b = 0.3 * rng.standard_normal(3)
    r = lt.solve_layer(W, X * 1e-6, bias=b * 1e-6, method="nettrim-cvx", activation="relu",
                       gain=0.1)
    assert r.certificate["omega_violation_rel"] > 1e-4  # the case this test is about
    assert r.status == "inaccurate"
    ok = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1)
    assert ok.status == "solved" and ok.certificate["omega_violation_rel"] <= 1e-4


def test_an_all_zero_layer_keeps_no_solver_residue():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 8))
    r = lt.solve_layer(np.zeros((3, 8)), X, bias=np.abs(rng.standard_normal(3)) + 0.1,
                       method="nettrim-cvx", activation="relu", gain=0.1)
    assert r.nnz == 0 and r.sparsity == 1.0


@pytest.mark.parametrize("eps", [0.0, [0.0, 1.0, 1.0]])
def test_an_exact_fit_is_solved_not_inaccurate(eps):
    rng = np.random.default_rng(0)
    X, W, b = rng.standard_normal((40, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    r = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="linear", eps=eps,
                       per_neuron=isinstance(eps, list))
    assert r.status == "solved" and r.certificate["omega_violation_rel"] <= 1e-6
