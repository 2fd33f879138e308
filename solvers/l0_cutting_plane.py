"""Exact l0-constrained pruning of a small ReLU layer by outer approximation.

Model (Phan, Nguyen, Nguyen and Kalagnanam, "Pruning deep neural networks with l0-constrained
optimization", ICDM 2020). Rows are independent. For output neuron j, with Xa = [X, 1] (the
ones column only when the layer has a bias), y = relu(Xa w0a_j) the original post-activation
output, Omega = {i : y_i > 0}, A = Xa[Omega], b = y[Omega] and C = Xa[not Omega]:

    minimize  1/2 ||A w - b||^2 + ridge/2 ||w_weights||^2
    s.t.      C w <= slack (elementwise),   ||w_weights||_0 <= k  (plus at most N per group of M
              consecutive inputs for an N:M pattern).

On Omega the pruned neuron reproduces the pre-activation; off Omega it only has to stay
switched off, so relu(Xa w) = y there exactly when slack = 0. The bias is a free coordinate.

Method (outer approximation over the support z in {0,1}^d, Bertsimas and Van Parys style).
A diagonal D >= 0 with Q = A^T A - D >= 0 (D = 0 on the bias) is split off and moved into a
perspective term, with e_i = D_ii + ridge > 0:

    c(z) = min { 1/2 w^T Q w - (A^T b)^T w + 1/2 ||b||^2 + 1/2 sum_i e_i w_i^2 / z_i
                 : C w <= slack },

which equals the model's objective on support z for binary z and is convex on [0,1]^d. At an
evaluated support z_t with optimum w* and multipliers mu* >= 0, v = Q w* - A^T b + C^T mu*
(on the weight coordinates; on the support v_i = -e_i w*_i) gives the valid cut

    eta >= c(z_t) + sum_i g_i (z_i - z_t,i),   g_i = -v_i^2 / (2 e_i).

The perspective makes the cuts strong even though the ridge is tiny: without D a pruned
coordinate's slope is v_i^2 / (2 ridge). D is the cheap choice D = 0.99 lambda_min(S^-1 G S^-1)
S^2 with G the Gram of the weight columns (centred when there is a bias, the Schur complement
of the bias) and S = diag(G)^(1/2). The master MILP (scipy's HiGHS) minimises eta over the cuts,
sum z = k (no loss: c never increases when coordinates are added) and the N:M group rows; its
optimum is a lower bound, the best evaluated support an upper bound. Each subproblem (a QP on
the support, solved by Clarabel; a Cholesky solve when Omega^c is empty) is the exact refit of
the ReLU model on that support, so ``refit`` is inherent. The search stops when the relative
gap (UB - LB) / UB is at most ``gap_tol``.

Limits: at most ``max_inputs`` inputs (the MILP is exponential in the worst case), ``max_cuts``
master iterations per neuron, ``time_limit`` seconds per layer (shared out evenly over the
neurons still to do) and ``node_limit`` branch-and-bound nodes per master solve. On a limit the
best support found is returned with the proven bounds in ``certificate``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import clarabel
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import nm_topk, row_topk
from layertrim.solvers.registry import register, run

_DEFAULT_SECONDS_PER_NEURON = 60.0
_QP_TOL = 1e-11
_ROOT_ROUNDS = 100  # LP cutting rounds before the first MILP
_ROOT_TOL = 1e-4  # ... or until the LP bound is this close (relative) to c at its point
_LIMIT_STATUS = ("time_limit", "node_limit", "cut_limit", "stalled")  # worst last wins


@dataclass
class Point:
    """An evaluated support: objective c(z), optimal w (length p), multipliers mu, cut slopes g."""

    value: float
    w: np.ndarray
    mu: np.ndarray
    v: np.ndarray
    g: np.ndarray


class NeuronModel:
    """The ReLU l0 model of one output neuron with its perspective split.

    Parameters
    ----------
    Xa : (n, p) inputs, with the ones column last when ``has_bias``.
    w0a : (p,) original weights (and bias).
    has_bias : whether the last coordinate is a free, unpenalised bias.
    ridge : absolute ridge on the weights (> 0).
    slack : allowed pre-activation on the switched-off samples.
    """

    def __init__(self, Xa: np.ndarray, w0a: np.ndarray, has_bias: bool, ridge: float,
                 slack: float):
        y = Xa @ w0a
        on = y > 0
        self.A, self.b, self.C = Xa[on], y[on], Xa[~on]
        self.p = Xa.shape[1]
        self.d = self.p - int(has_bias)
        self.has_bias, self.ridge, self.slack = has_bias, ridge, slack
        self.G = self.A.T @ self.A
        self.Atb = self.A.T @ self.b
        self.const = 0.5 * float(self.b @ self.b)
        self.D = perspective_diagonal(self.G, has_bias)
        self.e = self.D + ridge
        self.cache: dict[bytes, Point] = {}

    def objective(self, w: np.ndarray) -> float:
        """1/2 ||A w - b||^2 + ridge/2 ||w_weights||^2 for a full-length w."""
        r = self.A @ w - self.b
        return 0.5 * float(r @ r) + 0.5 * self.ridge * float(w[: self.d] @ w[: self.d])

    def evaluate(self, z: np.ndarray) -> Point:
        """c(z) with its cut slopes; z is a 0/1 support (cached) or a point of [0,1]^d."""
        z = np.asarray(z)
        if z.dtype != bool:
            return self._solve_support(np.clip(z, 0.0, 1.0))
        key = z.tobytes()
        if key not in self.cache:
            self.cache[key] = self._solve_support(z.astype(float))
        return self.cache[key]

    def _solve_support(self, z: np.ndarray) -> Point:
        on = z > 1e-9  # a coordinate with z_i = 0 is forced to w_i = 0 by the perspective
        cols = np.flatnonzero(on)
        # on the support the perspective adds e_i / z_i - D_i to the Gram's diagonal, which is
        # the plain ridge when z_i = 1
        extra = self.e[cols] / z[cols] - self.D[cols]
        if self.has_bias:
            cols, extra = np.append(cols, self.d), np.append(extra, 0.0)
        w = np.zeros(self.p)
        mu = np.zeros(len(self.C))
        if len(self.b) and len(cols):  # a dead neuron (empty Omega) is fitted by w = 0
            P = self.G[np.ix_(cols, cols)] + np.diag(extra)
            q = -self.Atb[cols]
            if len(self.C):
                w[cols], mu = _clarabel_qp(P, q, self.C[:, cols], self.slack)
            else:  # nothing to keep switched off: ridge least squares
                w[cols] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(P), -q)
        ww = w[: self.d]
        r = self.A @ w - self.b
        value = 0.5 * float(r @ r) - 0.5 * float(self.D @ ww**2)
        value += 0.5 * float(self.e[on] @ (ww[on] ** 2 / z[on]))
        # v = Q w - A^T b + C^T mu on the weights; its square over e_i is the cut's slope
        v = (self.G @ w - self.Atb + self.C.T @ mu)[: self.d] - self.D * ww
        return Point(value, w, mu, v, -(v**2) / (2 * self.e))


def perspective_diagonal(G: np.ndarray, has_bias: bool) -> np.ndarray:
    """Diagonal D >= 0 on the weights with G - diag(D, 0) positive semidefinite.

    With a bias the weights' block must stay above the bias's Schur complement, so the bound
    comes from the centred Gram. D = 0.99 lambda_min(S^-1 Gc S^-1) S^2, S = diag(Gc)^(1/2).
    """
    Gc = G
    if has_bias:
        n_on = G[-1, -1]
        Gc = G[:-1, :-1] - np.outer(G[:-1, -1], G[:-1, -1]) / n_on if n_on > 0 else G[:-1, :-1]
    diag = np.diag(Gc).copy()
    D = np.zeros(len(diag))
    live = diag > 1e-12 * max(float(diag.max(initial=0.0)), 1e-300)
    if live.any():
        s = np.sqrt(diag[live])
        lam = float(np.linalg.eigvalsh(Gc[np.ix_(live, live)] / np.outer(s, s))[0])
        D[live] = 0.99 * max(lam, 0.0) * s**2
    return D


def _clarabel_qp(P: np.ndarray, q: np.ndarray, C: np.ndarray,
                 slack: float) -> tuple[np.ndarray, np.ndarray]:
    """min 1/2 x^T P x + q^T x s.t. C x <= slack; returns x and the multipliers mu >= 0."""
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    settings.tol_gap_abs = settings.tol_gap_rel = settings.tol_feas = _QP_TOL
    settings.tol_ktratio = 1e-9
    solver = clarabel.DefaultSolver(
        sp.csc_matrix(np.triu(P)), q, sp.csc_matrix(C), np.full(len(C), float(slack)),
        [clarabel.NonnegativeConeT(len(C))], settings,
    )
    sol = solver.solve()
    if sol.status not in (clarabel.SolverStatus.Solved, clarabel.SolverStatus.AlmostSolved):
        raise RuntimeError(f"Clarabel failed on a support subproblem: {sol.status}")
    # Clarabel's dual z satisfies P x + q + C^T z = 0: it is mu
    return np.asarray(sol.x), np.maximum(np.asarray(sol.z), 0.0)


class _Master:
    """min eta over the cuts, sum z = k and the N:M group rows, solved from scratch by HiGHS."""

    def __init__(self, d: int, k: int, groups: tuple[int, int] | None, scale: float):
        self.d, self.k, self.scale = d, k, scale
        rows, lo, hi = [np.append(np.ones(d), 0.0)], [k], [k]
        if groups is not None:
            n_keep, width = groups
            for s in range(0, d, width):
                r = np.zeros(d + 1)
                r[s:s + width] = 1.0
                rows.append(r)
                lo.append(0)
                hi.append(n_keep)
        self.fixed = (rows, lo, hi)
        self.cuts: list[np.ndarray] = []
        self.rhs: list[float] = []

    def add_cut(self, z: np.ndarray, pt: Point) -> None:
        # eta - g^T z >= c(z_t) - g^T z_t, eta measured in units of ``scale``
        self.cuts.append(np.append(-pt.g / self.scale, 1.0))
        self.rhs.append((pt.value - float(pt.g @ z)) / self.scale)

    def solve(self, time_left: float, node_limit: int | None, gap: float,
              relax: bool = False) -> tuple[np.ndarray | None, float, int]:
        """Master optimum z (0/1 unless ``relax``), its lower bound and scipy's status code."""
        rows, lo, hi = self.fixed
        A = np.vstack(rows + self.cuts)
        lb = np.concatenate([lo, self.rhs])
        ub = np.concatenate([hi, np.full(len(self.cuts), np.inf)])
        opts = {"time_limit": max(time_left, 1e-3), "mip_rel_gap": gap,
                # not in scipy's list, passed to HiGHS verbatim: the default 1e-6 absolute
                # tolerances are too coarse for a 1e-7 relative proof
                "mip_abs_gap": 1e-12, "primal_feasibility_tolerance": 1e-9}
        if node_limit is not None:
            opts["node_limit"] = node_limit
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
            for presolve in (True, False):  # HiGHS's presolve now and then fails on these rows
                res = milp(np.append(np.zeros(self.d), 1.0),
                           integrality=np.append(np.full(self.d, 0 if relax else 1), 0),
                           bounds=Bounds(np.zeros(self.d + 1),
                                         np.append(np.ones(self.d), np.inf)),
                           constraints=LinearConstraint(A, lb, ub),
                           options={**opts, "presolve": presolve})
                if res.status != 4:
                    break
        z = None
        if res.x is not None:
            z = np.clip(res.x[: self.d], 0.0, 1.0) if relax else res.x[: self.d] > 0.5
        if res.status == 0:
            bound = res.fun
        else:
            bound = res.mip_dual_bound if res.mip_dual_bound is not None else 0.0
            bound = bound if np.isfinite(bound) else 0.0
        return z, max(bound, 0.0) * self.scale, res.status


def _check_options(ridge, slack, gap_tol, max_cuts, time_limit, node_limit, max_inputs,
                   warm_start, refit) -> None:
    def is_int(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    def is_num(x) -> bool:
        return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)

    if not is_num(ridge) or not (0 < ridge < np.inf):
        raise InvalidInputError(f"ridge must be a finite number > 0, got {ridge!r}")
    if not is_num(slack) or not (0 <= slack < np.inf):
        raise InvalidInputError(f"slack must be a finite number >= 0, got {slack!r}")
    if not is_num(gap_tol) or not (0 <= gap_tol < 1):
        raise InvalidInputError(f"gap_tol must be a number in [0, 1), got {gap_tol!r}")
    for name, val in (("max_cuts", max_cuts), ("max_inputs", max_inputs)):
        if not is_int(val) or val < 1:
            raise InvalidInputError(f"{name} must be an integer >= 1, got {val!r}")
    if node_limit is not None and (not is_int(node_limit) or node_limit < 1):
        raise InvalidInputError(f"node_limit must be None or an integer >= 1, got {node_limit!r}")
    if time_limit is not None and (not is_num(time_limit) or not time_limit > 0):
        raise InvalidInputError(f"time_limit must be None or seconds > 0, got {time_limit!r}")
    if warm_start is not None and not isinstance(warm_start, str):
        raise InvalidInputError(f"warm_start must be a method name or None, got {warm_start!r}")
    if not isinstance(refit, bool):
        raise InvalidInputError(f"refit must be True or False, got {refit!r}")


def _start_supports(model: NeuronModel, w0: np.ndarray, k: int,
                    groups: tuple[int, int] | None) -> list[np.ndarray]:
    """Cheap supports whose cuts shape the master early: |w0|, |w0| ||a_i||, |A^T b| / ||a_i||."""
    scale = np.sqrt(np.maximum(np.diag(model.G)[: model.d], 1e-300))
    scores = [np.abs(w0), np.abs(w0) * scale, np.abs(model.Atb[: model.d]) / scale]
    return [_round_support(s, k, groups) for s in scores]


def _round_support(z: np.ndarray, k: int, groups: tuple[int, int] | None) -> np.ndarray:
    """The nearest support to a fractional z: its k (or N per group) largest entries."""
    if groups is None:
        return row_topk(z[None, :], k)[0]
    return nm_topk(z[None, :], *groups)[0]


def _feasible(z: np.ndarray, k: int, groups: tuple[int, int] | None) -> bool:
    if int(z.sum()) != k:
        return False
    return groups is None or bool(np.all(z.reshape(-1, groups[1]).sum(axis=1) <= groups[0]))


@register("l0-cutting-plane",
          "ReLU l0 model solved to proven optimality by perspective outer approximation (small d)")
def solve(
    problem: LayerProblem,
    *,
    ridge: float = 1e-6,
    slack: float = 0.0,
    gap_tol: float = 1e-7,
    max_cuts: int = 500,
    time_limit: float | None = None,
    node_limit: int | None = None,
    max_inputs: int = 64,
    warm_start: str | None = "l0-admm",
    refit: bool = True,
) -> LayerResult:
    """Prune a ReLU layer by the exact l0 model, one neuron at a time (see the module doc).

    Parameters
    ----------
    ridge : ridge on the weights relative to mean(diag H); > 0, it keeps the cuts finite.
    slack : pre-activation allowed on the samples where the original neuron is off (>= 0).
    gap_tol : stop a neuron when (UB - LB) / UB <= gap_tol.
    max_cuts : master MILP iterations per neuron.
    time_limit : seconds for the layer; None gives 60 s per neuron.
    node_limit : branch-and-bound nodes per master solve (None: no limit).
    max_inputs : largest d accepted; the exact search is exponential in the worst case.
    warm_start : registered method whose mask gives each row's first support, or None.
    refit : accepted for API uniformity; every subproblem is the exact refit of its support.

    Returns
    -------
    LayerResult with status "optimal" when every neuron's gap is proven, else the first limit
    hit ("time_limit", "node_limit", "cut_limit" or "stalled"); ``certificate`` holds per
    neuron lower_bound, upper_bound, gap, iterations, and the total relu_objective and the
    max_violation of C w <= slack.
    """
    t0 = time.perf_counter()
    _check_options(ridge, slack, gap_tol, max_cuts, time_limit, node_limit, max_inputs,
                   warm_start, refit)
    if problem.X is None:
        raise InvalidInputError(
            "l0-cutting-plane needs the calibration inputs X, not only the Gram"
        )
    m, d, pat = problem.m, problem.d, problem.pattern
    if d > max_inputs:
        raise InvalidInputError(
            f"l0-cutting-plane proves optimality only for small layers: d={d} exceeds "
            f"max_inputs={max_inputs}; use method 'l0-admm' for larger layers"
        )
    if pat.kind == "layer" and m > 1:
        raise InvalidInputError(
            "l0-cutting-plane is exact per neuron, so the layer separates over neurons: it needs "
            "pattern='row' or 'N:M' (pattern='layer' only for a single output, m=1)"
        )
    k = problem.nnz if pat.kind == "layer" else problem.row_nnz
    groups = (pat.n, pat.m) if pat.kind == "nm" else None
    has_bias = problem.bias is not None
    Xa = problem.X.astype(np.float64)
    if has_bias:
        Xa = np.hstack([Xa, np.ones((len(Xa), 1))])
    ridge_abs = float(ridge) * problem.mean_diag()
    budget = _DEFAULT_SECONDS_PER_NEURON * m if time_limit is None else float(time_limit)
    deadline = t0 + budget
    warm_mask = run(problem, warm_start).mask if warm_start is not None else None

    W0a = problem.W0a
    Wa = np.zeros_like(W0a, dtype=np.float64)
    mask = np.zeros((m, d), dtype=bool)
    history: list[dict] = []
    cert: dict[str, list] = {"lower_bound": [], "upper_bound": [], "gap": [], "iterations": [],
                             "status": []}
    total_iters, relu_obj, violation = 0, 0.0, 0.0
    for j in range(m):
        neuron_deadline = time.perf_counter() + (deadline - time.perf_counter()) / (m - j)
        model = NeuronModel(Xa, W0a[j], has_bias, ridge_abs, float(slack))
        starts = _start_supports(model, problem.W0[j], k, groups)
        if warm_mask is not None:
            starts.insert(0, warm_mask[j])
        best, lb, iters, status = _solve_neuron(model, starts, k, groups, gap_tol, max_cuts,
                                                neuron_deadline, node_limit, history, j)
        pt = model.evaluate(best)
        Wa[j], mask[j] = pt.w, best
        ub = pt.value
        gap = max(ub - lb, 0.0) / ub if ub > 0 else 0.0
        for key, val in (("lower_bound", lb), ("upper_bound", ub), ("gap", gap),
                         ("iterations", iters), ("status", status)):
            cert[key].append(val)
        total_iters += iters
        relu_obj += ub
        if len(model.C):
            violation = max(violation, float(np.max(model.C @ pt.w)) - float(slack), 0.0)

    statuses = set(cert["status"])
    status = "optimal"
    for s in _LIMIT_STATUS:
        if s in statuses:
            status = s
    certificate = {**cert, "relu_objective": relu_obj, "max_violation": violation,
                   "gap_tol": float(gap_tol)}
    settings = {"ridge": float(ridge), "ridge_abs": ridge_abs, "slack": float(slack),
                "gap_tol": float(gap_tol), "max_cuts": int(max_cuts), "time_limit": budget,
                "node_limit": node_limit, "max_inputs": int(max_inputs), "k": int(k),
                "warm_start": warm_start, "refit": refit}
    return finalize(problem, Wa, mask, solver="l0-cutting-plane", settings=settings, t0=t0,
                    iterations=total_iters, status=status, history=history,
                    certificate=certificate)


def _solve_neuron(model: NeuronModel, starts: list[np.ndarray], k: int,
                  groups: tuple[int, int] | None, gap_tol: float, max_cuts: int,
                  deadline: float, node_limit: int | None, history: list[dict],
                  neuron: int) -> tuple[np.ndarray, float, int, str]:
    """Outer approximation for one neuron: best support, lower bound, iterations, status."""
    d = model.d
    best, ub = None, np.inf
    points = [np.ones(d, dtype=bool)] + [np.asarray(z, dtype=bool) for z in starts]
    for z in points:  # the full support's cut is valid too, though not a candidate
        if _feasible(z, k, groups) and model.evaluate(z).value < ub:
            best, ub = z, model.evaluate(z).value
    if best is None:  # k == d with an odd warm mask cannot happen; keep a candidate anyway
        best = starts[-1]
        ub = model.evaluate(best).value
    master = _Master(d, k, groups, scale=max(ub, 1e-300))
    for z in points:
        master.add_cut(z, model.evaluate(z))
    floor = 1e-12 * 2 * model.const  # absolute gap below round-off of the objective itself

    def closed(lb_: float) -> bool:
        return ub - lb_ <= max(gap_tol * ub, floor)

    lb, it, exact = 0.0, 0, False
    if closed(lb):
        return best, lb, it, "optimal"
    # Kelley's loop on the LP relaxation: cuts at fractional points are valid too and cheap
    # (the same QP with diagonal e_i / z_i), and they tighten every later MILP a lot
    for _ in range(_ROOT_ROUNDS):
        left = deadline - time.perf_counter()
        if left <= 0:
            break
        zf, bound, code = master.solve(left, None, 0.0, relax=True)
        if code != 0 or zf is None:
            break
        lb = max(lb, min(bound, ub))
        pt = model.evaluate(zf)
        master.add_cut(zf, pt)
        zr = _round_support(zf, k, groups)
        if zr.tobytes() not in model.cache:
            ptr = model.evaluate(zr)
            master.add_cut(zr, ptr)
            if ptr.value < ub:
                best, ub = zr, ptr.value
        if closed(lb) or pt.value - bound <= _ROOT_TOL * ub:
            break
    while True:
        if it >= max_cuts:
            return best, lb, it, "cut_limit"
        left = deadline - time.perf_counter()
        if left <= 0:
            return best, lb, it, "time_limit"
        # an inexact master (relative gap a quarter of the current one) is much cheaper and
        # still yields a new support and a valid bound; it goes exact once it repeats itself
        mgap = gap_tol / 10 if exact else max(gap_tol / 10, 0.25 * (ub - lb) / ub)
        z, bound, code = master.solve(left, node_limit, gap=mgap)
        it += 1
        lb = max(lb, min(bound, ub))
        fresh = z is not None and z.tobytes() not in model.cache
        if fresh:
            pt = model.evaluate(z)
            master.add_cut(z, pt)
            if pt.value < ub:
                best, ub = z, pt.value
        history.append({"neuron": neuron, "iter": it, "lb": lb, "ub": ub})
        if closed(lb):
            return best, lb, it, "optimal"
        if not fresh and code == 0 and not exact:
            exact = True
            continue
        exact = False
        if not fresh:
            # no new support to cut off: a limit stopped the master, or (solved to optimality
            # on a known support yet the bound stays below) round-off has stalled the search
            if code == 0:
                return best, lb, it, "stalled"
            return best, lb, it, "time_limit" if time.perf_counter() >= deadline else "node_limit"
