"""Net-Trim ADMM engine (``nettrim``): agreement with the cvxpy reference, a weak-duality
bound, the fused kernels against closed forms, convergence reporting and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import layertrim as lt
import layertrim.solvers.nettrim_admm as nettrim_admm
from layertrim.errors import InvalidInputError
from layertrim.solvers.nettrim_admm import default_penalties, live_columns
from layertrim.solvers.nettrim_engine import NetTrimADMM, relative_violation
from layertrim.solvers.nettrim_kernels import (
    dual_terms,
    pair_sums,
    project_set_and_update,
    shrink_and_update,
    violation_sums,
)
from layertrim.solvers.nettrim_rules import cascade_rule, parallel_rule

from .conftest import correlated_inputs


def layer(seed, d=14, m=6, n=150):
    rng = np.random.default_rng(seed)
    X = correlated_inputs(n, d, seed=seed + 10)
    return rng.standard_normal((m, d)), X, 0.3 * rng.standard_normal(m)


def tight(**kw):  # well below the 1e-4 agreement asked of the engine, so the test can fail
    return dict(reltol=1e-5, dual_reltol=1e-4, feas_tol=1e-6, obj_tol=1e-8, max_iter=50000,
                **kw)


def cascade_case(seed, per_neuron=False):
    """A layer, inputs X_hat perturbed from its X, and the cascade rule's targets on them."""
    W, X, b = layer(seed)
    rng = np.random.default_rng(seed)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    W0a = np.hstack([W, b[:, None]])
    X_hat = X + 0.1 * rng.standard_normal(X.shape)
    t = cascade_rule(np.hstack([X_hat, np.ones((len(X), 1))]), W0a, np.maximum(Xa @ W0a.T, 0),
                     True, per_neuron=per_neuron)
    return W, X, b, X_hat, t


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_matches_cvxpy_objective_and_is_feasible(seed, activation):
    W, X, b = layer(seed)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation=activation, gain=0.08)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation=activation, gain=0.08,
                       **tight())
    c = r.certificate
    assert c["converged"] and r.status == "solved"
    assert c["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    assert c["violation_rel"] <= 1e-6
    assert c["omega_violation_rel"] <= 1e-6
    assert c["l1"] < 0.9 * np.abs(W).sum()  # it really pruned


@pytest.mark.parametrize("seed, n, gain, rel", [(7, 300, 0.05, 1e-3), (4, 8000, 0.1, 1e-4)])
def test_defaults_meet_the_advertised_tolerances(seed, n, gain, rel):
    # n = 8000: rho_fit scaled down for the sample count (see the next test)
    W, X, b = layer(seed, d=20, m=8, n=n)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=gain)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=gain)
    assert r.certificate["converged"]
    assert r.certificate["violation_rel"] <= 1e-5
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=rel)
    assert r.certificate["l1"] < 0.95 * np.abs(W).sum()  # it really pruned


def test_rho_fit_shrinks_slowly_with_the_sample_count():
    W, X, b = layer(3, d=20, m=8, n=8000)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    W0a = np.hstack([W, b[:, None]])
    scaled = {}
    for n in (1000, 2000, 8000):
        t = parallel_rule(Xa[:n], W0a, True, 0.05)
        rho, fit = default_penalties(W, t)
        scaled[n] = (rho, fit * float(np.mean(t.Y[t.omega] ** 2)))  # without the targets' scale
    assert scaled[1000] == pytest.approx(scaled[2000], rel=1e-12)  # unchanged up to n = 2000
    assert scaled[8000][1] == pytest.approx(scaled[2000][1] * 4 ** -0.25, rel=1e-12)
    assert scaled[8000][0] == scaled[2000][0]  # rho on W does not depend on n


def test_cascade_data_and_per_neuron_radii_match_cvxpy():
    W, X, b, X_hat, t = cascade_case(3)
    opts = dict(bias=b, activation="relu", Y=t.Y, V=t.V, eps=t.eps)
    ref = lt.solve_layer(W, X_hat, method="nettrim-cvx", **opts)
    r = lt.solve_layer(W, X_hat, method="nettrim", **opts, **tight())
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1,
                         per_neuron=True)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.1,
                       per_neuron=True, **tight())
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    assert r.certificate["violation_rel"] <= 1e-6


def test_per_neuron_cascade_radii_and_floors_match_cvxpy():
    """Cascade data with one radius per neuron (eps as m radii), and a target sparsity driving
    the gain over per-neuron floors: the engine meets the reference and every floor holds."""
    W, X, b, X_hat, t = cascade_case(5, per_neuron=True)
    opts = dict(bias=b, activation="relu", Y=t.Y, V=t.V, per_neuron=True)
    ref = lt.solve_layer(W, X_hat, method="nettrim-cvx", eps=t.eps, **opts)
    r = lt.solve_layer(W, X_hat, method="nettrim", eps=t.eps, **opts, **tight())
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    assert r.certificate["violation_rel"] <= 1e-6
    assert np.allclose(r.certificate["eps"], t.eps)
    r = lt.solve_layer(W, X_hat, method="nettrim", eps_min=t.eps, target_sparsity=0.6, **opts)
    assert np.all(np.asarray(r.certificate["eps"]) >= t.eps * (1 - 1e-12))
    assert r.certificate["violation_rel"] <= 1e-5


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_precisions(precision):
    W, X, b = layer(1)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                       precision=precision, feas_tol=1e-4)
    assert r.certificate["converged"]
    assert r.certificate["violation_rel"] <= 1e-4
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-3)


def test_residual_balancing_reaches_the_same_optimum():
    W, X, b = layer(6)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                       adaptive_rho=True, rho=10.0, **tight())
    assert r.certificate["converged"]
    assert r.certificate["rho"] != 10.0  # balancing moved it
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)


def test_dual_bound_is_below_the_optimum_and_closes_the_gap():
    W, X, b = layer(2)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    t = parallel_rule(Xa, np.hstack([W, b[:, None]]), True, 0.08)
    rho, fit = default_penalties(W, t)
    eng = NetTrimADMM(Xa, t, W.shape[1], rho=rho, rho_fit=fit)
    opt = ref.certificate["l1"]
    bounds = []
    for _ in range(40):
        eng.iterate(250, t.eps)
        bounds.append(eng.dual_bound(t.eps, has_bias=True))
        assert bounds[-1] <= opt * (1 + 1e-6)  # weak duality, at every iterate
    assert bounds[-1] >= opt * (1 - 1e-3)


@pytest.mark.parametrize("per_neuron", [False, True])
def test_cascade_dual_bound_is_below_the_optimum(per_neuron):
    """Weak duality with V != 0 (cascade) and per-neuron radii: every bound, from any iterate,
    is below cvxpy's optimum, and the last ones come close to it."""
    W, X, b = layer(4)
    rng = np.random.default_rng(4)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    W0a = np.hstack([W, b[:, None]])
    Xh = np.hstack([X + 0.1 * rng.standard_normal(X.shape), np.ones((len(X), 1))])
    t = cascade_rule(Xh, W0a, np.maximum(Xa @ W0a.T, 0), True)
    opts = dict(bias=b, activation="relu", Y=t.Y, V=t.V, eps=t.eps)
    if per_neuron:  # eps_j = g ||Y_Omega,j||, g large enough for W0 to stay feasible
        y_norm = np.linalg.norm(np.where(t.omega, t.Y, 0), axis=0)
        miss = np.linalg.norm(np.where(t.omega, Xh @ W0a.T - t.Y, 0), axis=0)
        g = 1.05 * float(np.max(miss / y_norm))
        t.eps = g * y_norm
        opts = {**opts, "eps": None, "gain": g, "per_neuron": True}
    ref = lt.solve_layer(W, Xh[:, :-1], method="nettrim-cvx", **opts)
    opt = ref.certificate["l1"]
    rho, fit = default_penalties(W, t)
    eng = NetTrimADMM(Xh, t, W.shape[1], rho=rho, rho_fit=fit)
    for _ in range(30):
        eng.iterate(200, t.eps)
        bound = eng.dual_bound(t.eps, has_bias=True)
        assert bound <= opt * (1 + 1e-6)
    assert bound >= opt * (1 - 1e-2)


def test_a_certified_gap_stops_where_the_dual_residual_cannot():
    """With Boyd's dual tolerance out of reach, only the duality-gap certificate can stop the
    solve: it must, at an objective within the certified gap of cvxpy's optimum."""
    W, X, b = layer(5)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08)
    opt = ref.certificate["l1"]
    blocked = dict(dual_reltol=1e-14, abstol=1e-14, feas_tol=1e-6, max_iter=20000)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                       gap_tol=1e-6, **blocked)
    c = r.certificate
    assert c["converged"] and c["violation_rel"] <= 1e-6
    last = c["residuals"][-1]
    assert last["dual"] > last["eps_dual"]  # Boyd's rule did not stop it
    assert 0 <= last["gap"] <= 1e-6
    assert c["l1"] == pytest.approx(opt, rel=1e-5)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                       gap_tol=None, **{**blocked, "max_iter": 3000})
    assert not r.certificate["converged"] and r.status == "max_iter"


def test_refine_mode_follows_float64_past_the_float32_floor():
    """From the same float32 state, float64 iterations with float32 products on differences
    (refine) must track plain float64 iterations, and both must get far below the accuracy
    that float32 iterations stall at."""
    W, X, b = layer(9, d=30, m=10, n=400)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    t = parallel_rule(Xa, np.hstack([W, b[:, None]]), True, 0.08)
    rho, fit = default_penalties(W, t)
    single, plain, refined = (NetTrimADMM(Xa, t, W.shape[1], rho=rho, rho_fit=fit,
                                          dtype=np.float32) for _ in range(3))
    for e in (single, plain, refined):  # deterministic: the same float32 state
        e.iterate(300, t.eps)
    np.testing.assert_array_equal(plain.Q, refined.Q)
    plain.to_float64()
    refined.to_float64(refine=True)
    assert refined.refine is not None and plain.refine is None
    for e in (single, plain, refined):
        e.iterate(3000, t.eps)
    viol = {name: e.violation(e.weights(), t.eps)
            for name, e in (("single", single), ("plain", plain), ("refined", refined))}
    assert viol["plain"] < 1e-9 and viol["refined"] < 1e-9
    assert viol["single"] > 100 * max(viol["plain"], 1e-12)  # float32's floor is real
    Wp, Wr = plain.weights(), refined.weights()
    np.testing.assert_allclose(Wr, Wp, rtol=0, atol=1e-7 * np.abs(Wp).max())


@pytest.mark.parametrize("seed", [106, 271, 162])
def test_float32_converged_means_feasible_in_float64(seed):
    """Seeds where float32's own violation check rounded under feas_tol while the float64
    product of the returned W was 5-10% over it, and converged=True was reported."""
    W, X, b = layer(seed, d=60, m=20, n=500)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.005,
                       precision="float32")
    assert not r.certificate["converged"] or r.certificate["violation_rel"] <= 1e-5


def test_linear_refit_is_least_squares_on_the_support():
    """A linear layer's refit has no constraint left but the support: each neuron's weights
    must be the least-squares fit on its kept inputs (numpy's lstsq as the reference). The
    refit used to stop at its first check, 29% above it, because the dual tolerance counted
    the multipliers of W = 0 off the support."""
    W, X, b = layer(0, d=30, m=12, n=400)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="linear", gain=0.03,
                       refit=True)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    Z0 = Xa @ np.hstack([W, b[:, None]]).T
    got = Xa @ np.hstack([r.W, r.bias[:, None]]).T
    for j in range(W.shape[0]):
        cols = np.r_[np.flatnonzero(r.mask[j]), X.shape[1]]
        coef = np.linalg.lstsq(Xa[:, cols], Z0[:, j], rcond=None)[0]
        best = np.linalg.norm(Xa[:, cols] @ coef - Z0[:, j])
        assert np.linalg.norm(got[:, j] - Z0[:, j]) <= best * (1 + 1e-6) + 1e-9


def test_refit_matches_the_reference_refit():
    W, X, b = layer(8)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08,
                         refit=True)
    plain = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                           **tight())
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08, refit=True,
                       **tight())
    assert r.certificate["converged"] and r.certificate["refit"]["converged"]
    np.testing.assert_array_equal(r.mask, plain.mask)  # the support is kept
    np.testing.assert_array_equal(r.mask, ref.mask)
    Xa = np.hstack([X, np.ones((len(X), 1))])
    t = parallel_rule(Xa, np.hstack([W, b[:, None]]), True, 0.08)

    def fit(res):
        Z = Xa @ np.hstack([res.W, res.bias[:, None]]).T
        return np.linalg.norm(np.where(t.omega, Z - t.Y, 0.0))

    assert fit(r) == pytest.approx(fit(ref), rel=1e-4)
    assert fit(r) < 0.99 * fit(plain)  # the l1 solution sits on the ball; the refit is inside
    assert r.certificate["violation_rel"] <= 1e-6


def test_blank_input_columns_are_dropped_and_the_optimum_kept():
    """Columns of X that are zero in every sample (blank pixels, dead units) leave the ADMM;
    the result is still the full program's optimum, with zero weights on them, and the
    sparsity target, refit and warm start still count the full layer."""
    W, X, b = layer(3)
    X[:, [0, 5, 6, 11]] = 0.0
    kept = live_columns(np.hstack([X, np.ones((len(X), 1))]), 14)
    np.testing.assert_array_equal(kept, [1, 2, 3, 4, 7, 8, 9, 10, 12, 13, 14])  # bias kept
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.08)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08, **tight())
    assert r.certificate["converged"]
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    assert r.certificate["violation_rel"] <= 1e-6
    assert not r.mask[:, [0, 5, 6, 11]].any()
    again = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                           warm_start=r.W)
    assert again.certificate["converged"] and again.W.shape == W.shape
    fit = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                         refit=True, **tight())
    np.testing.assert_array_equal(fit.mask, r.mask)
    hit = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu",
                         target_sparsity=0.5)
    assert abs(hit.sparsity - 0.5) <= 0.01  # of all m x d weights, blank columns included


def test_not_converged_is_reported_with_residuals():
    W, X, b = layer(0)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.05,
                       max_iter=20, check_every=10)
    assert r.status == "max_iter"
    assert r.certificate["converged"] is False
    assert len(r.certificate["residuals"]) == 2
    assert {"primal", "dual", "eps_primal", "eps_dual"} <= set(r.certificate["residuals"][0])
    assert r.certificate["residuals"][-1]["violation"] > 0


def test_time_limit_is_reported():
    W, X, b = layer(0, d=40, m=20, n=2000)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.05,
                       time_limit=1e-3, feas_tol=1e-9, check_every=1)
    assert r.status == "time_limit"
    assert r.certificate["converged"] is False


def test_time_limit_stops_the_sparsity_search():
    """Out of time, the search starts no new solve: one short solve, then the result says
    time_limit (it used to go on solving a chunk at every remaining step of the search)."""
    # (0.7: at 0.6 this layer's fraction jumps 0.5875 -> 0.6125 within 0.2% of the gain, and
    # the search ends on either side of the band depending on each solve's last digits)
    W, X, b = layer(0, d=40, m=20, n=2000)
    full = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu",
                          target_sparsity=0.7)
    assert full.status == "solved" and len(full.certificate["bisection"]) > 2
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", target_sparsity=0.7,
                       time_limit=1e-3, check_every=1)
    assert r.status == "time_limit" and r.certificate["converged"] is False
    steps = r.certificate["bisection"]
    assert len(steps) == 1 and steps[0]["iterations"] == r.certificate["iterations"] == 1
    assert r.W.shape == W.shape and np.all(np.isfinite(r.W))


def test_target_sparsity_is_hit_within_one_percent():
    W, X, b = layer(4, d=20, m=10, n=200)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", target_sparsity=0.6)
    assert abs(r.sparsity - 0.6) <= 0.01
    assert r.certificate["converged"]
    assert len(r.certificate["bisection"]) >= 1


def test_unconverged_search_solves_far_from_the_target_are_not_finished(monkeypatch):
    """A capped search solve that did not converge but prunes far from the target only places
    the target on one side: it is not run on to the accurate stop (that cost LeNet's cascade
    layers thousands of iterations at gains the search then left). Near the band it still
    is, and an accurate, converged solve confirms the gain."""
    monkeypatch.setattr(nettrim_admm, "SEARCH_MAX_ITER", 20)  # capped solves cannot converge
    W, X, b = layer(4, d=20, m=10, n=200)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", target_sparsity=0.6,
                       check_every=20)
    assert abs(r.sparsity - 0.6) <= 0.01 and r.certificate["converged"]
    steps = r.certificate["bisection"]
    left = [s for s in steps if not s["accurate"] and not s["converged"]]
    assert left, steps  # (each used to be run on to the accurate stop)
    for s in left:  # capped, and far from the target: near it they are finished
        assert s["iterations"] == 20, steps
        assert abs(s["sparsity"] - 0.6) > nettrim_admm.SEARCH_TRUST, steps
    assert steps[-1]["accurate"] and steps[-1]["converged"]


def test_the_certificate_is_taken_only_once_the_l1_is_steady():
    """The certified gap's float64 product is taken only at checks where the l1 moved by at
    most gap_tol over the last 20 iterations; with Boyd's dual out of reach it is the gap
    that stops, and its W is within 1e-4 of cvxpy."""
    W, X, b = layer(2, d=20, m=10, n=300)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.05,
                       dual_reltol=1e-12, gap_tol=1e-5, check_every=5)
    hist = r.certificate["residuals"]
    assert r.certificate["converged"] and "gap" in hist[-1], hist[-1]
    seen = [(h["iter"], h["l1"]) for h in hist]
    for h in hist:
        if "bound" not in h:
            continue
        back = [l1 for it, l1 in seen if it <= h["iter"] - 20]
        assert back and abs(h["l1"] - back[-1]) <= 1e-5 * h["l1"], h
    assert "bound" in hist[-1] and hist[-1]["bound"] <= r.certificate["l1"]
    assert any("bound" not in h and h["primal"] <= h["eps_primal"] for h in hist)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.05)
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)


def test_hopeless_restorations_are_skipped_without_changing_the_solve(monkeypatch):
    """At a high gain the restored W costs more l1 than RESTORE_L1 allows for many checks; the
    attempts whose l1 change (predicted from the last one, scaled by the violation) is beyond
    twice the budget are skipped, and the solve ends where it did with an attempt at every
    check: same iterations, same W. (The budget is held at 1e-5, where this layer's
    restorations stay over it for many checks; at the default 2e-5 they seldom do.)"""
    W, X, b = layer(4, d=40, m=20, n=1000)
    monkeypatch.setattr(nettrim_admm, "RESTORE_L1", 1e-5)
    runs = []
    for skip in (float("inf"), nettrim_admm.RESTORE_SKIP):
        monkeypatch.setattr(nettrim_admm, "RESTORE_SKIP", skip)
        r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.3)
        hist = r.certificate["residuals"]
        runs.append((r, sum("restore_attempt" in h for h in hist),
                     sum("restore_skipped" in h for h in hist)))
    (every, tried_all, none), (r, tried, skipped) = runs
    assert none == 0 and skipped >= 2 and tried < tried_all, (tried_all, tried, skipped)
    assert r.certificate["converged"] and every.certificate["converged"]
    assert r.certificate["iterations"] == every.certificate["iterations"]
    np.testing.assert_array_equal(r.W, every.W)


def test_an_oscillating_l1_does_not_pass_for_settled():
    """At gain 0.9 this layer's l1 (4 weights kept) oscillates by 1e-3 over ~100 iterations
    while Boyd's residuals are met: comparing two checks 20 iterations apart passed at a turn
    and stopped 5e-4 above the optimum. The settling test also asks the last 60 iterations
    to fall steadily or stay within 3 obj_tol."""
    W, X, b = layer(0)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.9)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.9)
    assert r.certificate["converged"] and r.certificate["violation_rel"] <= 1e-5
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)


def test_the_tail_test_extrapolates_a_slowing_fall_and_nothing_else():
    """_tail_small: a geometric fall of ratio 0.7 per window passes once its last step and
    the extrapolated rest are small; a fall that slowed by a ratio near 1 in either of the
    last two windows, a rise, a last step over TAIL_STEP obj_tol, or too short a history
    does not."""
    tol, base = 2e-6, 1000.0

    def seen(falls):  # l1 at checks 20 apart: base + what is still to fall
        out, level = [], base + sum(falls)
        for k, f in enumerate(falls):
            out.append((20 * k, level))
            level -= f
        return out, 20 * len(falls), level

    def passes(falls):
        s, it, l1 = seen(falls)
        return nettrim_admm._tail_small(s, it, l1, tol)

    # on an l1 of 1000 the last fall may be up to 4e-3 (TAIL_STEP obj_tol), the rest 1e-2
    assert passes([1.8e-3 / 0.49, 1.8e-3 / 0.7, 1.8e-3])  # the rest: 4.2e-3
    assert not passes([5e-3 / 0.09, 5e-3 / 0.3, 5e-3])  # the rest 2.1e-3, the last fall over
    assert not passes([1.8e-3 / 0.98, 1.8e-3 / 0.99, 1.8e-3])  # ratio 0.99: rest 0.18
    assert not passes([1.8e-3 / 0.7, 1.8e-3 / 0.49, 1.8e-3])  # the fall sped up, then slowed
    assert not passes([1.8e-3, -1e-4, 1.8e-3])  # a rise in between
    assert not passes([1.8e-3 / 0.7, 1.8e-3])  # two windows only
    # the ratio is the larger of the two: 0.3 then 0.9 extrapolates with 0.9, and so does
    # 0.95 then 0.5 (the older window nearly as slow as the one before it)
    assert not passes([1.8e-3 / 0.27, 1.8e-3 / 0.9, 1.8e-3])
    assert not passes([1.8e-3 / (0.5 * 0.95), 1.8e-3 / 0.5, 1.8e-3])


def test_the_tail_route_of_settled_sees_every_check():
    """With checks closer than the windows (check_every 5), the tail route of _settled also
    asks every check of the last 60 iterations to fall: an l1 that rose between the sampled
    checks does not pass, the same falls without the rise do, and _settled without ``tail``
    (the plain test: a fall of at most obj_tol per window) passes neither."""
    # per 20 iterations, the last 3e-3: over obj_tol * 1000, within TAIL_STEP times that
    tol, falls = 2e-6, [3e-3 / 0.25, 3e-3 / 0.5, 3e-3]
    level, smooth = 1000.0 + sum(falls), []
    for it in range(0, 61, 5):  # a straight fall within each window
        k = min(it // 20, 2)
        drop = sum(falls[:k]) + falls[k] * (it - 20 * k) / 20 if it < 60 else sum(falls)
        smooth.append((it, level - drop))
    wavy = [(it, v + (1e-3 if it % 20 == 10 else 0.0)) for it, v in smooth]
    for seen, want in ((smooth, True), (wavy, False)):
        *before, (it, l1) = seen
        assert nettrim_admm._settled(before, it, l1, tol, tail=True) is want
        assert not nettrim_admm._settled(before, it, l1, tol)


def test_warm_start_from_the_solution_converges_at_once():
    W, X, b = layer(5)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08)
    again = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.08,
                           warm_start=r.W)
    assert again.certificate["converged"]
    assert again.certificate["l1"] == pytest.approx(r.certificate["l1"], rel=1e-3)


def test_bad_input():
    W, X, b = layer(0)

    def run(**kw):
        return lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", **kw)

    for kw, msg in [({"gain": 0}, "gain"), ({"gain": -0.1}, "gain"),
                    ({"target_sparsity": 1.0}, "target_sparsity"),
                    ({"target_sparsity": 0.0}, "target_sparsity"),
                    ({"alpha": 2.0}, "alpha"), ({"precision": "half"}, "precision"),
                    ({"rho": -1.0}, "rho"), ({"max_iter": 0}, "max_iter"),
                    ({"Y": np.ones((len(X) + 1, W.shape[0]))}, "shape mismatch"),
                    ({"Y": np.full((len(X), W.shape[0]), np.nan)}, "Y"),
                    ({"Y": -np.ones((len(X), W.shape[0]))}, "no positive entry"),
                    ({"warm_start": np.ones((2, 2))}, "warm_start"),
                    ({"eps": 1.0, "target_sparsity": 0.5}, "not both"),
                    ({"eps": np.nan}, "eps must be a finite"), ({"eps": np.inf}, "eps"),
                    ({"omega_tol": -1.0}, "omega_tol"), ({"omega_tol": np.nan}, "omega_tol"),
                    ({"zero_tol": np.nan}, "zero_tol"), ({"zero_tol": -1e-3}, "zero_tol"),
                    ({"eps": 1.0, "per_neuron": True}, "one radius per neuron"),
                    ({"eps": np.ones(W.shape[0])}, "pass per_neuron=True"),
                    ({"eps": np.ones(W.shape[0] + 1), "per_neuron": True}, "shape"),
                    ({"eps": -np.ones(W.shape[0]), "per_neuron": True}, "negative"),
                    ({"eps_min": np.ones(W.shape[0])}, "pass per_neuron=True"),
                    ({"eps_min": "x"}, "eps_min must be"),
                    ({"V": np.zeros((len(X), W.shape[0]))}, "needs Y")]:
        with pytest.raises(InvalidInputError, match=msg):
            run(**kw)
    with pytest.raises(InvalidInputError, match="linear"):  # V is a ReLU layer's bound
        lt.solve_layer(W, X, bias=b, method="nettrim", activation="linear",
                       Y=X @ W.T, V=np.zeros((len(X), W.shape[0])))
    Xn = X.copy()
    Xn[0, 0] = np.nan
    with pytest.raises(InvalidInputError, match="NaN|finite"):
        lt.solve_layer(W, Xn, bias=b, method="nettrim", activation="relu")
    with pytest.raises(InvalidInputError, match="no positive entry"):  # a dead layer
        lt.solve_layer(W, X, bias=np.full(W.shape[0], -1e6), method="nettrim",
                       activation="relu")


# ---- the kernels against closed forms ------------------------------------------------------

def _f(a):
    return np.asfortranarray(a)


dims = st.tuples(st.integers(1, 12), st.integers(1, 6))


@settings(max_examples=60, deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.floats(1.0, 1.95), st.floats(0.01, 5.0),
       st.booleans())
def test_projection_kernel_matches_the_closed_form(shape, seed, alpha, eps, per_neuron):
    n, m = shape
    rng = np.random.default_rng(seed)
    AB, U, L, Y = (rng.standard_normal((n, m)) for _ in range(4))
    V = rng.standard_normal((n, m))
    omega = rng.random((n, m)) < 0.6
    eps_arr = np.full(m, eps) if per_neuron else np.array([eps])
    t = alpha * AB + (1 - alpha) * U + L
    # closed form: the ball on Omega (one radius, or one per column) and a clip off Omega
    R = np.where(omega, t - Y, 0.0)
    if per_neuron:
        scale = np.minimum(1.0, eps / np.maximum(np.linalg.norm(R, axis=0), 1e-300))
    else:
        scale = np.full(m, min(1.0, eps / max(np.linalg.norm(R), 1e-300)))
    expect = np.where(omega, Y + scale * (t - Y), np.minimum(t, V))
    U0 = U.copy()
    Uf, Lf, Uold, T = _f(U.copy()), _f(L.copy()), _f(np.zeros((n, m))), _f(np.zeros((n, m)))
    YV = np.where(omega, Y, V)
    project_set_and_update(_f(AB), Uf, Lf, _f(YV), _f(omega), eps_arr, alpha, Uold, T, True)
    np.testing.assert_allclose(Uf, expect, atol=1e-12)
    np.testing.assert_allclose(Lf, t - expect, atol=1e-12)
    np.testing.assert_allclose(T, Uf - Lf, atol=1e-12)
    np.testing.assert_array_equal(Uold, U0)
    # the projection lands in C
    fit = np.where(omega, Uf - Y, 0.0)
    norms = np.linalg.norm(fit, axis=0) if per_neuron else np.linalg.norm(fit)
    assert np.all(norms <= eps * (1 + 1e-12))
    assert np.all(Uf[~omega] <= V[~omega])
    # the refit's prox of eps/2 ||(U - Y)_Omega||^2 (eps reused as the weight)
    Uf, Lf = _f(U0.copy()), _f(L.copy())
    project_set_and_update(_f(AB), Uf, Lf, _f(YV), _f(omega), eps_arr, alpha, Uold, T, False,
                           eps)
    np.testing.assert_allclose(Uf, np.where(omega, (eps * Y + t) / (eps + 1), np.minimum(t, V)),
                               atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.floats(1.0, 1.95), st.floats(0.0, 2.0))
def test_shrink_kernel_matches_the_closed_form(shape, seed, alpha, kappa):
    p, m = shape
    rng = np.random.default_rng(seed)
    B, Q, L = (rng.standard_normal((p, m)) for _ in range(3))
    n_pen = max(p - 1, 1)  # the last row plays the unpenalised bias
    t = alpha * B + (1 - alpha) * Q + L
    soft = np.sign(t) * np.maximum(np.abs(t) - kappa, 0.0)
    expect = np.vstack([soft[:n_pen], t[n_pen:]])
    Qf, Lf, Qold, R = _f(Q.copy()), _f(L.copy()), _f(np.zeros((p, m))), _f(np.zeros((p, m)))
    shrink_and_update(_f(B), Qf, Lf, kappa, n_pen, alpha, Qold, R, True)
    np.testing.assert_allclose(Qf, expect, atol=1e-12)
    np.testing.assert_allclose(Lf, t - expect, atol=1e-12)
    np.testing.assert_allclose(R, Qf - Lf, atol=1e-12)
    np.testing.assert_array_equal(Qold, Q)
    # the refit's projection onto a support (the bias row always kept)
    support = _f(rng.random((n_pen, m)) < 0.5)
    Qf, Lf = _f(Q.copy()), _f(L.copy())
    shrink_and_update(_f(B), Qf, Lf, kappa, n_pen, alpha, Qold, R, False, support)
    expect = np.vstack([np.where(support, t[:n_pen], 0.0), t[n_pen:]])
    np.testing.assert_allclose(Qf, expect, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.booleans(), st.booleans())
def test_violation_and_residual_sums_match_the_array_expressions(shape, seed, single, fortran):
    """The one-pass kernels behind relative_violation and the residuals, against numpy, for
    float32 or float64 Z in either layout."""
    n, m = shape
    rng = np.random.default_rng(seed)
    Y = np.maximum(rng.standard_normal((n, m)), 0.0)
    omega = Y > 0
    V = np.where(omega, 0.0, 0.3 * rng.standard_normal((n, m)))
    Z = Y + rng.standard_normal((n, m))
    Z = Z.astype(np.float32) if single else Z
    Z = np.asfortranarray(Z) if fortran else Z
    Z64 = np.asarray(Z, dtype=np.float64)
    fit2, over2 = violation_sums(np.ascontiguousarray(Z), Y, V, omega)
    np.testing.assert_allclose(fit2, np.sum(np.where(omega, Z64 - Y, 0.0) ** 2, axis=0),
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(over2, np.sum(np.where(omega, 0.0, np.maximum(Z64 - V, 0.0)) ** 2,
                                             axis=0), rtol=1e-12, atol=1e-300)
    from layertrim.solvers.nettrim_rules import NetTrimTargets

    for eps in (1.0 + float(np.sqrt(fit2.sum())) / 2, 1.0 + np.sqrt(fit2) / 2):
        t = NetTrimTargets(Y, omega, V, eps)
        ball = np.maximum(np.sqrt(np.atleast_1d(fit2) if np.ndim(eps) else fit2.sum()) - eps,
                          0.0)
        over = over2 if np.ndim(eps) else over2.sum()
        expect = np.max(np.sqrt(ball**2 + over) / np.asarray(eps))
        assert relative_violation(Z, t, eps) == pytest.approx(expect, rel=1e-10, abs=1e-300)
    A, B = _f(Z64), _f(rng.standard_normal((n, m)).astype(Z.dtype))
    B64 = np.asarray(B, dtype=np.float64)
    np.testing.assert_allclose(pair_sums(A, B), [np.sum((A - B64) ** 2), np.sum(A**2),
                                                 np.sum(B64**2)], rtol=1e-12, atol=1e-300)


@settings(max_examples=60, deadline=None)
@given(dims, st.integers(0, 2**31 - 1), st.booleans(), st.booleans(), st.booleans())
def test_dual_terms_match_the_array_expressions(shape, seed, single, center, with_v):
    """The dual bound's one-pass kernel against the numpy it replaced: a float32 or float64
    dual, centred on Omega or not (a column without Omega zeroed when centred), with or
    without bounds V off Omega."""
    n, m = shape
    rng = np.random.default_rng(seed)
    L = _f(rng.standard_normal((n, m)).astype(np.float32 if single else np.float64))
    omega = _f(rng.random((n, m)) < 0.6)
    omega[:, 0] = False  # a dead neuron
    Y = np.abs(rng.standard_normal((n, m)))
    V = -np.abs(rng.standard_normal((n, m))) if with_v else Y
    rho = 1.7
    y_out = np.empty((n, m), order="F")
    lin, nrm2 = dual_terms(L, rho, omega, Y, V, with_v, center, y_out)
    y = rho * np.asarray(L, dtype=np.float64)
    if center:
        cnt = omega.sum(axis=0)
        mean = np.where(cnt > 0, y.sum(axis=0) / np.maximum(cnt, 1), 0.0)
        y = np.where(omega, y - mean, y)
        y[:, cnt == 0] = 0.0
    y_on = np.where(omega, y, 0.0)
    expect = np.sum(y_on * Y, axis=0)
    if with_v:
        expect += np.sum(np.where(omega, 0.0, y * V), axis=0)
    scale = np.abs(y).sum() + 1.0
    np.testing.assert_allclose(y_out, y, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(lin, expect, rtol=1e-10, atol=1e-12 * scale * Y.max())
    np.testing.assert_allclose(nrm2, np.sum(y_on**2, axis=0), rtol=1e-10,
                               atol=1e-12 * scale**2)
    if center:  # the dual constraint of an unpenalised bias: every column sums to zero
        np.testing.assert_allclose(y_out.sum(axis=0), 0.0, atol=1e-10 * scale)


def test_relative_violation_is_the_distance_to_the_set():
    rng = np.random.default_rng(0)
    Y = np.abs(rng.standard_normal((30, 4)))
    omega = rng.random((30, 4)) < 0.5
    from layertrim.solvers.nettrim_rules import NetTrimTargets

    t = NetTrimTargets(Y, omega, np.zeros((30, 4)), 1.0)
    Z = np.where(omega, Y, -1.0)
    assert relative_violation(Z, t, 1.0) == 0.0
    Z2 = Z.copy()
    i, j = np.argwhere(~omega)[0]
    Z2[i, j] = 0.3  # 0.3 above V = 0
    assert relative_violation(Z2, t, 1.0) == pytest.approx(0.3)
    Z3 = np.where(omega, Y + 2.0 / np.sqrt(omega.sum()), -1.0)  # ||fit|| = 2, eps = 1
    assert relative_violation(Z3, t, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("scale", [255.0, 1e3])
def test_a_bias_far_off_the_weights_scale_reaches_the_optimum(scale):
    # pixel-scale inputs: weights of 1e-3 against a bias of 0.5; the iteration stalled 3-11%
    # above the optimum with Boyd's residuals met, until the ones column was rescaled
    rng = np.random.default_rng(5)
    X = rng.uniform(0, scale, (200, 30))
    W = rng.standard_normal((8, 30)) / scale * 0.5
    b = 0.5 * rng.standard_normal(8)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", gain=0.1)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.1)
    assert r.certificate["converged"]
    assert r.certificate["violation_rel"] <= 1e-5
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    # the same program on rescaled inputs (W * s, X / s): the same l1 up to the scale
    s = lt.solve_layer(W * scale, X / scale, bias=b, method="nettrim", activation="relu",
                       gain=0.1)
    assert s.certificate["l1"] / scale == pytest.approx(r.certificate["l1"], rel=1e-4)
    assert np.abs(r.bias - s.bias).max() <= 1e-3 * np.abs(b).max()
    assert np.abs(r.bias - ref.bias).max() <= 1e-3 * np.abs(b).max()


def test_linear_layers_reach_the_optimum_at_the_defaults():
    # Boyd's dual test at 3e-2 stopped linear layers 1e-3 above the optimum
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X, W = rng.standard_normal((150, 20)), rng.standard_normal((6, 20))
        ref = lt.solve_layer(W, X, method="nettrim-cvx", activation="linear", gain=0.1)
        r = lt.solve_layer(W, X, method="nettrim", activation="linear", gain=0.1)
        assert r.certificate["converged"] and r.settings["program"] == "linear"
        assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)


def test_a_zero_radius_is_an_exact_fit_measured_against_the_targets():
    # eps = 0: the violation was divided by 1e-300 (1e+297) and the solve never converged
    rng = np.random.default_rng(0)
    X, W, b = rng.standard_normal((20, 30)), rng.standard_normal((3, 30)), rng.standard_normal(3)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation="relu", eps=0.0)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", eps=0.0)
    assert r.certificate["converged"] and r.certificate["violation_rel"] <= 1e-5
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=1e-4)
    Z = X @ r.W.T + r.bias
    Y = np.maximum(X @ W.T + b, 0)
    on = Y > 0
    assert np.linalg.norm((Z - Y)[on]) <= 1e-5 * np.linalg.norm(Y[on])


def test_refit_certificate_reports_the_returned_weights_l1():
    W, X, b = layer(0, d=15, m=4, n=120)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation="relu", gain=0.2, refit=True)
    assert r.certificate["l1"] == pytest.approx(np.abs(r.W).sum(), rel=1e-12)
    assert r.certificate["refit"]["l1_program"] < r.certificate["l1"]  # the refit moved W


def test_a_cascade_target_past_gain_one_is_reached():
    # V = X_hat W0^T < 0 off Omega: W = 0 is infeasible at any gain, and 70% lies past gain 1
    rng = np.random.default_rng(3)
    X, W = rng.standard_normal((120, 15)), rng.standard_normal((4, 15))
    b = 0.3 * rng.standard_normal(4)
    Xh = X + 0.3 * rng.standard_normal(X.shape)
    t = cascade_rule(np.hstack([Xh, np.ones((120, 1))]), np.hstack([W, b[:, None]]),
                     np.maximum(X @ W.T + b, 0), True)
    r = lt.solve_layer(W, Xh, bias=b, method="nettrim", activation="relu", Y=t.Y, V=t.V,
                       eps_min=t.eps, target_sparsity=0.7)
    assert r.certificate["target_met"] and abs(r.sparsity - 0.7) <= 0.01
    assert r.certificate["gain"] > 1


@pytest.mark.parametrize("bias_scale", [1e-6, 0.05])
@pytest.mark.parametrize("activation", ["relu", "linear"])
def test_a_small_bias_keeps_the_optimum(bias_scale, activation):
    # the ones column is rescaled only for a bias far above the weights' scale: scaled down
    # for a small one, the iteration stopped 1e-3 above the optimum
    rng = np.random.default_rng(0)
    X = rng.standard_normal((150, 12)) + 2
    W, b = rng.standard_normal((5, 12)), bias_scale * rng.standard_normal(5)
    ref = lt.solve_layer(W, X, bias=b, method="nettrim-cvx", activation=activation, gain=0.1)
    r = lt.solve_layer(W, X, bias=b, method="nettrim", activation=activation, gain=0.1)
    assert r.certificate["converged"]
    assert r.certificate["l1"] == pytest.approx(ref.certificate["l1"], rel=2e-4)
