"""Net-Trim by cvxpy: the reference for small layers and for testing the fast engine.

Not for production sizes: a generic conic solver forms the n x m constraint set explicitly
(cvxpy + SCS took 313 s on a 300 -> 100 MNIST layer with n = 2000). The programs and the
rules for Y, Omega, V and eps are in ``nettrim_rules.py``. The bias (ones column) is fitted
but never penalised or pruned. After the solve, weights with |w| <= zero_tol * max|W0| are set
to exactly zero, which makes the nonzero count exact.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_nonnegative, check_positive, finalize
from layertrim.solvers.nettrim_rules import (
    NetTrimTargets,
    _check_gain,
    bisect_gain,
    check_eps_min,
    check_radius,
    floor_gain,
    max_gain,
    parallel_rule,
    radius_at,
    target_met,
    violation_scale,
)
from layertrim.solvers.registry import register
from layertrim.validate import check_bool, real_finite_array

_SOLVERS = ("CLARABEL", "SCS")  # conic: the ε-ball is a second-order cone, no QP solver


def augmented_inputs(problem: LayerProblem) -> np.ndarray:
    if problem.X is None:
        raise InvalidInputError("Net-Trim needs the calibration inputs X, not only the Gram")
    X = np.asarray(problem.X, dtype=np.float64)
    return X if problem.bias is None else np.hstack([X, np.ones((X.shape[0], 1))])


def targets_for(problem: LayerProblem, Xa: np.ndarray, gain: float, *, Y=None, V=None,
                eps=None, omega_tol: float = 0.0, per_neuron: bool = False) -> NetTrimTargets:
    """The parallel rule, or user-given Y (and V, eps) as the cascade rule produces them."""
    relu = problem.activation == "relu"
    check_nonnegative("omega_tol", omega_tol)
    if V is not None and (Y is None or not relu):
        raise InvalidInputError(
            "V bounds a ReLU layer's outputs off Omega under the cascade rule: it needs Y, and "
            "this layer is " + ("linear" if not relu else "given no Y"))
    if Y is None:
        t = parallel_rule(Xa, problem.W0a, relu, gain, omega_tol=omega_tol,
                          per_neuron=per_neuron)
    else:
        Yv = real_finite_array("Y", Y, 2).astype(np.float64)
        if Yv.shape != (Xa.shape[0], problem.m):
            raise InvalidInputError(f"shape mismatch: Y has shape {Yv.shape}, expected (n, m) = "
                                    f"({Xa.shape[0]}, {problem.m})")
        omega = Yv > omega_tol if relu else None
        if relu and not omega.any():
            raise InvalidInputError("Y has no positive entry: the ReLU layer is off everywhere")
        Vv = None
        if relu:
            Vv = (np.full(Yv.shape, float(omega_tol)) if V is None
                  else real_finite_array("V", V, 2).astype(np.float64))
            if Vv.shape != Yv.shape:
                raise InvalidInputError(f"shape mismatch: V has shape {Vv.shape}, Y {Yv.shape}")
        R = np.where(omega, Yv, 0.0) if relu else Yv
        e = gain * (np.linalg.norm(R, axis=0) if per_neuron else float(np.linalg.norm(R)))
        t = NetTrimTargets(Yv, omega, Vv, e)
    if eps is not None:
        e = check_radius("eps", eps, problem.m)
        if np.ndim(e) != (1 if per_neuron else 0):
            raise InvalidInputError(
                "per_neuron=True needs eps as one radius per neuron (m of them), not one for "
                "the layer" if per_neuron else
                "eps holds one radius per neuron: pass per_neuron=True, or a single eps")
        t.eps = e
    return t


def _build(cp, Xa, t: NetTrimTargets, d: int, m: int, support=None):
    """The cvxpy program with eps as a parameter (so bisection re-solves reuse the compile)."""
    W = cp.Variable((m, Xa.shape[1]))
    Z = Xa @ W.T
    per_neuron = np.ndim(t.eps) == 1
    eps = cp.Parameter(m if per_neuron else (), nonneg=True)
    fit = Z - t.Y if t.omega is None else cp.multiply(t.omega, Z - t.Y)
    cons = [cp.norm(fit, 2, axis=0) <= eps] if per_neuron else [cp.norm(fit, "fro") <= eps]
    if t.omega is not None and (~t.omega).any():
        off = ~t.omega
        cons.append(cp.multiply(off, Z) <= np.where(off, t.V, 0.0))
    if support is not None:
        cons.append(cp.multiply(~support, W[:, :d]) == 0)
    prob = cp.Problem(cp.Minimize(cp.sum(cp.abs(W[:, :d]))), cons)
    return prob, W, eps


def certificate(Xa, W: np.ndarray, t: NetTrimTargets) -> dict:
    """Constraint violations of W: on Omega relative to eps (to the fit's target where eps is
    0, as ``nettrim_engine.relative_violation``), and the max off Omega."""
    Z = Xa @ W.T
    fit = Z - t.Y if t.omega is None else np.where(t.omega, Z - t.Y, 0.0)
    eps = np.asarray(t.eps, dtype=np.float64)
    norm = np.linalg.norm(fit, axis=0) if eps.ndim == 1 else np.linalg.norm(fit)
    rel = np.max(np.maximum(norm - eps, 0.0) / np.maximum(violation_scale(t, eps), 1e-300))
    off = 0.0
    if t.omega is not None and (~t.omega).any():
        off = float(max(np.max((Z - t.V)[~t.omega]), 0.0))
    return {"omega_violation_rel": float(rel), "off_omega_max_violation": off,
            "eps": eps.tolist() if eps.ndim else float(eps)}


FEAS_CHECK = 1e-4  # a returned W further outside its constraints is labelled "inaccurate"


def _check_status(status: str, what: str) -> None:
    """An infeasible program is bad input (a radius too small for Y, V); any other failure is
    the solver's."""
    if status in ("optimal", "optimal_inaccurate"):
        return
    if status.startswith("infeasible"):
        raise InvalidInputError(f"nettrim-cvx{what}: the program is infeasible ({status!r}): "
                                f"no W meets the constraints at this eps; raise gain or eps")
    raise RuntimeError(f"nettrim-cvx{what}: the solver failed with status {status!r}")


def check_target_sparsity(target_sparsity, eps=None) -> float | None:
    if target_sparsity is None:
        return None
    if eps is not None:
        raise InvalidInputError("give eps or target_sparsity, not both: the bisection moves eps")
    ok = isinstance(target_sparsity, (int, float, np.number)) and not isinstance(
        target_sparsity, bool)
    if not ok or not (0 < target_sparsity < 1):
        raise InvalidInputError(f"target_sparsity must be in (0, 1), got {target_sparsity!r}")
    return float(target_sparsity)


@register("nettrim-cvx", "Net-Trim l1 program in cvxpy (reference for small layers)",
          needs_target=False, per_sample=True)
def solve(
    problem: LayerProblem,
    *,
    gain: float = 0.05,
    target_sparsity: float | None = None,
    per_neuron: bool = False,
    Y=None,
    V=None,
    eps: float | None = None,
    eps_min: float = 0.0,
    omega_tol: float = 0.0,
    zero_tol: float = 1e-6,
    solver: str = "CLARABEL",
    refit: bool = False,
    max_bisect: int = 30,
) -> LayerResult:
    """Prune a layer with the Net-Trim convex program, solved by cvxpy.

    Parameters
    ----------
    gain : eps = gain * ||Y_Omega||_F (ReLU) or gain * ||Z0||_F (linear); typical 0.02-0.15.
    target_sparsity : bisect on the gain until the kept fraction is within 1% of 1 - target.
    per_neuron : one radius per neuron, eps_j = gain * ||Y_Omega,j||.
    Y, V, eps : cascade data (see ``nettrim_rules.cascade_rule``); default: the parallel rule.
        V (ReLU layers only) needs Y; eps is one radius, or m of them with ``per_neuron``.
    eps_min : a floor under gain * ||Y_Omega||: with the cascade rule's eps as the floor, a
        ``target_sparsity`` can drive the gain without making the program infeasible (m
        floors with ``per_neuron``).
    omega_tol : Omega = {Y > omega_tol}.
    zero_tol : final hard threshold, relative to max|W0|.
    solver : "CLARABEL" (default) or "SCS". (OSQP is not offered: every Net-Trim program has
        the second-order-cone ε-ball, which a QP solver cannot take.)
    refit : re-solve on the found support minimising the fit error, keeping the constraints.

    Returns
    -------
    LayerResult; ``certificate`` has the cvxpy status, the l1 optimum, eps and the violations.
    """
    import cvxpy as cp

    t0 = time.perf_counter()
    if not isinstance(solver, str) or solver.upper() not in _SOLVERS:
        raise InvalidInputError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    gain = _check_gain(gain)
    target = check_target_sparsity(target_sparsity, eps)
    per_neuron, refit = check_bool("per_neuron", per_neuron), check_bool("refit", refit)
    Xa = augmented_inputs(problem)
    d, m = problem.d, problem.m
    eps_min = check_eps_min(eps_min, m, per_neuron)
    check_nonnegative("zero_tol", zero_tol)
    check_positive("max_bisect", max_bisect, integer=True)
    t = targets_for(problem, Xa, gain, Y=Y, V=V, eps=eps, omega_tol=omega_tol,
                    per_neuron=per_neuron)
    prob, Wv, eps_par = _build(cp, Xa, t, d, m)
    base_eps = np.asarray(t.eps, dtype=np.float64) / gain  # eps scales linearly with the gain
    # relative to max|W0|; when W0 is all zero, to the data's ||Y|| / ||X|| (a threshold of 0
    # kept the solver's 1e-23 residues as weights)
    w_scale = float(np.max(np.abs(problem.W0)))
    if w_scale == 0:
        x_norm = float(np.linalg.norm(Xa[:, :d]))
        w_scale = float(np.linalg.norm(t.Y)) / x_norm if x_norm > 0 else 1.0

    def solve_at(g):
        eps_par.value = radius_at(base_eps, g, eps_min) if eps is None else np.asarray(t.eps)
        prob.solve(solver=solver.upper())
        _check_status(prob.status, "")
        W = np.array(Wv.value)
        W[:, :d][np.abs(W[:, :d]) <= zero_tol * w_scale] = 0.0
        return W

    history: list[dict] = []
    if target is None:
        W = solve_at(gain)
    else:
        W, gain, history = bisect_gain(solve_at, gain, target, max_bisect, d,
                                       min_gain=floor_gain(base_eps, eps_min),
                                       top_gain=max_gain(t))
    t.eps = radius_at(base_eps, gain, eps_min) if eps is None else t.eps
    eps_par.value = t.eps  # the returned solve's radius (the search may end elsewhere)
    l1 = float(np.abs(W[:, :d]).sum())
    status = prob.status
    mask = W[:, :d] != 0
    if refit:  # same variable and eps: minimise the fit on the support under the constraints
        Z = Xa @ Wv.T
        fit = Z - t.Y if t.omega is None else cp.multiply(t.omega, Z - t.Y)
        cons = list(prob.constraints) + [cp.multiply(~mask, Wv[:, :d]) == 0]
        rp = cp.Problem(cp.Minimize(cp.sum_squares(fit)), cons)
        rp.solve(solver=solver.upper())
        _check_status(rp.status, " refit (on the support the l1 program found)")
        status = rp.status if status == "optimal" else status
        W = np.array(Wv.value)
        W[:, :d][~mask] = 0.0
    cert = {"cvx_status": status, "l1": float(np.abs(W[:, :d]).sum()), "gain": gain,
            "solver": solver.upper(), **certificate(Xa, W, t)}
    if refit:
        cert["l1_program"] = l1  # the l1 optimum, before the refit moved the weights
    # the solver's own "optimal_inaccurate" can be far off (582% outside the ball on inputs
    # of 1e-6), and so can "optimal": the result says so when the returned W is infeasible
    off_scale = float(np.max(np.abs(t.Y))) or 1.0
    feasible = (cert["omega_violation_rel"] <= FEAS_CHECK
                and cert["off_omega_max_violation"] <= FEAS_CHECK * off_scale)
    result_status = "solved" if status == "optimal" and feasible else "inaccurate"
    if result_status == "solved" and target_met(mask, target) is False:
        result_status = "target_missed"  # the l1 path jumps over the band (see bisect_gain)
    settings = {"program": "linear" if t.omega is None else "relu",
                "gain": gain, "target_sparsity": target, "per_neuron": per_neuron,
                "eps_min": np.asarray(eps_min).tolist(), "omega_tol": omega_tol,
                "zero_tol": zero_tol,
                "solver": solver.upper(),
                "refit": refit}
    return finalize(problem, W, mask, solver="nettrim-cvx", settings=settings, t0=t0,
                    iterations=len(history) or 1, history=history, certificate=cert,
                    status=result_status)
