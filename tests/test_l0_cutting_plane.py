"""l0-cutting-plane: the exact ReLU l0 model, checked against brute force on small neurons."""

import itertools

import numpy as np
import pytest
import scipy.optimize

from layertrim import InvalidInputError, LayerProblem
from layertrim.solvers import l0_cutting_plane as cp  # importing registers the solver
from layertrim.solvers.masks import is_valid_mask
from layertrim.solvers.registry import available, run

from .conftest import correlated_inputs

FAST = {"warm_start": "sparsegpt"}  # a cheaper warm start keeps these tests quick


def make_problem(d, k, *, n=60, m=1, seed=0, bias=True, pattern="row", rho=0.8):
    rng = np.random.default_rng(seed)
    X = correlated_inputs(n, d, seed=seed + 100, rho=rho)
    W = rng.standard_normal((m, d))
    b = 0.5 * rng.standard_normal(m) if bias else None
    kwargs = {} if ":" in pattern else {"nnz": k * m}
    return LayerProblem.create(W, X, bias=b, pattern=pattern, activation="relu", **kwargs)


def augmented_inputs(P):
    return P.X if P.bias is None else np.hstack([P.X, np.ones((len(P.X), 1))])


def neuron_models(P, ridge=1e-6, slack=0.0):
    Xa = augmented_inputs(P)
    return [cp.NeuronModel(Xa, P.W0a[j], P.bias is not None, ridge * P.mean_diag(), slack)
            for j in range(P.m)]


def brute_force(model, k, groups=None):
    """c(z) of every support of size k (N:M-feasible ones only when ``groups``)."""
    vals = {}
    for S in itertools.combinations(range(model.d), k):
        z = np.zeros(model.d, dtype=bool)
        z[list(S)] = True
        if groups and np.any(z.reshape(-1, groups[1]).sum(axis=1) > groups[0]):
            continue
        vals[S] = model.evaluate(z).value
    return vals


def support_of(row):
    return tuple(int(i) for i in np.flatnonzero(row))


def check_against_brute_force(P, r, k, groups=None):
    cert = r.certificate
    assert r.status == "optimal"
    for j, model in enumerate(neuron_models(P)):
        vals = brute_force(model, k, groups)
        best = min(vals.values())
        assert cert["upper_bound"][j] == pytest.approx(best, rel=1e-6, abs=1e-12)
        assert cert["lower_bound"][j] <= best * (1 + 1e-9) + 1e-12
        assert cert["gap"][j] <= 1e-6
        # the chosen support is an argmin, and the weights are its exact refit
        assert vals[support_of(r.mask[j])] == pytest.approx(best, rel=1e-6, abs=1e-12)
        w = np.append(r.W[j], r.bias[j]) if P.bias is not None else r.W[j]
        resid = model.A @ w - model.b
        direct = 0.5 * resid @ resid + 0.5 * model.ridge * r.W[j] @ r.W[j]
        assert direct == pytest.approx(cert["upper_bound"][j], rel=1e-8, abs=1e-12)


@pytest.mark.parametrize(("d", "m", "bias", "seed"), [(8, 2, True, 0), (10, 1, False, 1),
                                                      (10, 1, True, 2)])
def test_matches_brute_force(d, m, bias, seed):
    k = d // 2
    P = make_problem(d, k, m=m, seed=seed, bias=bias)
    r = cp.solve(P, **FAST)
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    assert np.all(r.mask.sum(axis=1) == k)
    assert np.all(r.W[~r.mask] == 0)
    assert (r.bias is not None) == bias
    check_against_brute_force(P, r, k)


def test_default_warm_start():
    if "l0-admm" not in available():
        pytest.skip("l0-admm, the default warm start, is not registered")
    P = make_problem(8, 4, seed=10)
    r = cp.solve(P)
    assert r.settings["warm_start"] == "l0-admm"
    check_against_brute_force(P, r, 4)


def test_nm_pattern_matches_brute_force():
    P = make_problem(12, 6, seed=3, pattern="2:4")
    r = cp.solve(P, **FAST)
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    check_against_brute_force(P, r, 6, groups=(2, 4))


def test_single_output_layer_pattern():
    P = make_problem(9, 4, seed=4, pattern="layer")
    r = cp.solve(P, warm_start=None)
    assert r.nnz == 4
    check_against_brute_force(P, r, 4)


@pytest.mark.parametrize("slack", [0.0, 0.3])
def test_support_qp_agrees_with_slsqp(slack):
    """The Clarabel subproblem against an independent solver on a few supports."""
    P = make_problem(10, 5, seed=5)
    model = neuron_models(P, slack=slack)[0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        z = np.zeros(10, dtype=bool)
        z[rng.choice(10, 5, replace=False)] = True
        cols = np.append(np.flatnonzero(z), 10)  # the bias is always in
        A, C, b = model.A[:, cols], model.C[:, cols], model.b
        pen = np.append(np.full(5, model.ridge), 0.0)

        def f(x, A=A, b=b, pen=pen):
            return 0.5 * np.sum((A @ x - b) ** 2) + 0.5 * pen @ x**2

        def grad(x, A=A, b=b, pen=pen):
            return A.T @ (A @ x - b) + pen * x

        res = scipy.optimize.minimize(
            f, np.zeros(6), jac=grad, method="SLSQP", options={"ftol": 1e-13, "maxiter": 1000},
            constraints=[{"type": "ineq", "fun": lambda x, C=C: slack - C @ x,
                          "jac": lambda x, C=C: -C}])
        # SLSQP may stop on its line search at this precision: judge its point, not its flag
        assert res.status in (0, 8) and np.max(C @ res.x) <= slack + 1e-9
        pt = model.evaluate(z)
        assert pt.value == pytest.approx(res.fun, rel=1e-6)
        assert pt.value <= res.fun * (1 + 1e-9)  # the interior-point optimum is not worse
        assert np.max(model.C @ pt.w) <= slack + 1e-8


def test_cuts_are_valid_and_v_identity_holds():
    P = make_problem(10, 5, seed=6)
    model = neuron_models(P)[0]
    d, rng = model.d, np.random.default_rng(1)
    # each diagonal keeps Q = A^T A - diag(D, 0) positive semidefinite
    assert len(model.D) == 2
    for D in model.D:
        assert np.all(D >= 0) and np.any(D > 0)
        Q = model.G - np.diag(np.append(D, 0.0))
        assert np.linalg.eigvalsh(Q)[0] >= -1e-9 * np.abs(model.G).max()
    binaries = [rng.random(d) < rng.uniform(0.2, 0.9) for _ in range(40)]
    fractions = [np.where(rng.random(d) < 0.3, 0.0, rng.uniform(0.05, 1.0, d)) for _ in range(15)]
    tol = 1e-7 * model.const
    for zt in binaries[:8] + fractions[:4]:
        for which in range(len(model.D)) if zt.dtype != bool else [0]:
            pt = model.evaluate(zt, which)
            on = zt > 0
            e = model.e[which]
            # on the support stationarity makes v_i = -e_i w_i / z_i
            np.testing.assert_allclose(pt.v[on], -e[on] * pt.w[:d][on] / np.asarray(zt)[on],
                                       rtol=1e-5, atol=1e-6 * np.abs(pt.v).max())
            rows = range(len(pt.g)) if zt.dtype == bool else [which]
            for row, g in zip(rows, pt.g, strict=True):
                for zp in binaries:  # at binary points every diagonal's cut is below c
                    assert model.evaluate(zp).value >= pt.value + g @ (zp - zt * 1.0) - tol
                for zp in fractions:  # at fractional points below c with the same diagonal
                    assert model.evaluate(zp, row).value >= pt.value + g @ (zp - zt * 1.0) - tol
    # c on a binary support is the model's objective, whatever the diagonal
    z = binaries[0]
    pt = model.evaluate(z)
    direct = 0.5 * np.sum((model.A @ pt.w - model.b) ** 2) + 0.5 * model.ridge * pt.w[:d] @ pt.w[:d]
    assert pt.value == pytest.approx(direct, rel=1e-12)
    assert np.all(pt.w[:d][~z] == 0)


@pytest.mark.parametrize("slack", [0.0, 0.2])
def test_switched_off_samples_stay_off(slack):
    P = make_problem(10, 4, m=2, seed=7)
    r = cp.solve(P, slack=slack, **FAST)
    Xa = augmented_inputs(P)
    Z0 = Xa @ P.W0a.T
    Z = Xa @ np.hstack([r.W, r.bias[:, None]]).T
    off = Z0 <= 0
    assert np.max(Z[off]) <= slack + 1e-7
    assert r.certificate["max_violation"] <= 1e-7
    if slack == 0:  # then the pruned layer's ReLU output is exactly 0 where the original's is
        assert np.max(np.maximum(Z, 0)[off]) <= 1e-7


def check_d30_proof(k, seed):
    P = make_problem(30, k, n=300, seed=seed, rho=0.5)
    r = cp.solve(P, **FAST)
    assert r.status == "optimal"
    assert r.certificate["gap"][0] <= 1e-6
    # necessary for optimality: no single swap of a kept and a pruned weight is better
    model = neuron_models(P)[0]
    z = r.mask[0]
    ub = r.certificate["upper_bound"][0]
    for i in np.flatnonzero(z):
        for j in np.flatnonzero(~z):
            zs = z.copy()
            zs[i], zs[j] = False, True
            assert model.evaluate(zs).value >= ub * (1 - 1e-9)
    warm = run(P, "sparsegpt").mask[0]
    assert ub <= model.evaluate(warm).value * (1 + 1e-12)


def test_d30_neuron_proves_optimality():
    """d=30 keeping 22 (27% sparsity): about 6 s here (41 master MILPs). At 50% sparsity the
    perspective bound is weak under the ReLU constraints and a proof can take many minutes."""
    check_d30_proof(22, seed=30)


@pytest.mark.slow
def test_d30_neuron_at_33_percent_sparsity():
    """About 20 s here (62 master MILPs)."""
    check_d30_proof(20, seed=30)


def test_no_switched_off_samples_is_ridge_least_squares():
    rng = np.random.default_rng(9)
    X = correlated_inputs(60, 8, seed=9)
    P = LayerProblem.create(rng.standard_normal((1, 8)), X, bias=[100.0], nnz=4, pattern="row",
                            activation="relu")
    assert len(neuron_models(P)[0].C) == 0  # every sample active: no constraint, Cholesky
    check_against_brute_force(P, cp.solve(P, **FAST), 4)


def test_time_limit_returns_best_support_with_stated_gap():
    P = make_problem(12, 6, seed=1, m=2)
    r = cp.solve(P, time_limit=1e-6, **FAST)
    cert = r.certificate
    assert r.status == "time_limit"
    assert set(cert["status"]) == {"time_limit"}
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    for lb, ub, gap in zip(cert["lower_bound"], cert["upper_bound"], cert["gap"], strict=True):
        assert 0 <= lb <= ub
        assert gap == pytest.approx((ub - lb) / ub)
        assert 0 < gap <= 1


def test_cut_and_node_limits_keep_valid_bounds():
    P = make_problem(10, 5, seed=2)
    best = min(brute_force(neuron_models(P)[0], 5).values())
    r = cp.solve(P, max_cuts=1, **FAST)
    cert = r.certificate
    assert r.status == "cut_limit" and r.iterations == 1 and len(r.history) == 1
    assert cert["lower_bound"][0] <= best * (1 + 1e-9) <= cert["upper_bound"][0] * (1 + 2e-9)
    assert cert["gap"][0] > 1e-6
    r = cp.solve(P, node_limit=1, max_cuts=3, **FAST)
    assert r.status in {"optimal", "node_limit", "cut_limit"}
    assert r.certificate["lower_bound"][0] <= best * (1 + 1e-9)


def test_history_bounds_are_monotone():
    P = make_problem(10, 5, m=2, seed=0)
    r = cp.solve(P, **FAST)
    for j in range(2):
        rows = [h for h in r.history if h["neuron"] == j]
        lbs, ubs = [h["lb"] for h in rows], [h["ub"] for h in rows]
        assert np.all(np.diff(lbs) >= 0) and np.all(np.diff(ubs) <= 0)
        assert all(lb <= ub for lb, ub in zip(lbs, ubs, strict=True))
        if rows:
            assert ubs[-1] == r.certificate["upper_bound"][j]
    assert r.iterations == sum(r.certificate["iterations"])


def test_dead_neuron_is_pruned_to_zero():
    rng = np.random.default_rng(0)
    X = correlated_inputs(40, 6, seed=1)
    W = rng.standard_normal((1, 6))
    b = np.array([-1e3])  # never active on the data
    P = LayerProblem.create(W, X, bias=b, nnz=3, pattern="row", activation="relu")
    r = cp.solve(P, **FAST)
    assert r.status == "optimal" and r.nnz == 3
    assert r.certificate["upper_bound"] == [0.0]
    assert np.all(r.W == 0)


def test_registered_and_run_passes_refit_through():
    assert "l0-cutting-plane" in available()
    P = make_problem(8, 4, seed=8)
    r = run(P, "l0-cutting-plane", refit=False, warm_start="magnitude")
    assert r.solver == "l0-cutting-plane"
    assert r.settings["refit"] is False and r.settings["warm_start"] == "magnitude"
    with pytest.raises(InvalidInputError, match="no option"):
        run(P, "l0-cutting-plane", not_an_option=1)


def test_needs_calibration_inputs():
    X = correlated_inputs(50, 8, seed=0)
    W = np.random.default_rng(0).standard_normal((2, 8))
    P = LayerProblem.create(W, gram=X.T @ X, nnz=8, pattern="row", activation="relu")
    with pytest.raises(InvalidInputError, match="calibration inputs X"):
        cp.solve(P, **FAST)


def test_too_many_inputs_points_to_l0_admm():
    P = make_problem(10, 5)
    with pytest.raises(InvalidInputError, match="max_inputs=8.*l0-admm"):
        cp.solve(P, max_inputs=8, **FAST)
    with pytest.raises(InvalidInputError, match="l0-admm"):
        cp.solve(make_problem(66, 33, n=80))


def test_layer_pattern_needs_single_output():
    P = make_problem(8, 4, m=2, pattern="layer")
    with pytest.raises(InvalidInputError, match="pattern='row' or 'N:M'"):
        cp.solve(P, **FAST)


@pytest.mark.parametrize("option", [
    {"ridge": -1e-6}, {"ridge": 0.0}, {"ridge": float("nan")}, {"slack": -0.1},
    {"slack": float("inf")}, {"max_cuts": 1.5}, {"max_cuts": True}, {"max_cuts": 0},
    {"time_limit": 0}, {"time_limit": "10"}, {"node_limit": 0}, {"gap_tol": 2.0},
    {"gap_tol": -1e-3}, {"max_inputs": 0}, {"warm_start": 3}, {"refit": "yes"},
])
def test_bad_options(option):
    P = make_problem(8, 4)
    with pytest.raises(InvalidInputError):
        cp.solve(P, **{**FAST, **option})
    assert issubclass(InvalidInputError, ValueError)


def test_a_layer_that_is_not_relu_is_refused():
    import layertrim as lt
    from layertrim.errors import InvalidInputError

    rng = np.random.default_rng(0)
    with pytest.raises(InvalidInputError, match="ReLU"):
        lt.solve_layer(rng.standard_normal((2, 6)), rng.standard_normal((40, 6)), sparsity=0.5,
                       method="l0-cutting-plane", activation="linear")
