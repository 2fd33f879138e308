"""Exact l0-constrained pruning of a small ReLU layer by outer approximation.

Model (Phan, Nguyen, Nguyen and Kalagnanam, "Pruning deep neural networks with l0-constrained
optimization", ICDM 2020). Rows are independent. For output neuron j, with Xa = [X, 1] (the
ones column only when the layer has a bias), y = relu(Xa w0a_j) the original post-activation
output, Omega = {i : y_i > 0}, A = Xa[Omega], b = y[Omega] and C = Xa[not Omega]:

    minimize  1/2 ||A w - b||^2 + ridge/2 ||w_weights||^2
    s.t.      C w <= slack (elementwise),  ||w_weights||_0 <= k  (and at most N per group of M
              consecutive inputs for an N:M pattern).

On Omega the pruned neuron reproduces the pre-activation; off Omega it only has to stay off,
so relu(Xa w) = y there exactly when slack = 0. The bias is a free, never-pruned coordinate.

Method: outer approximation over the support z in {0,1}^d (Bertsimas and Van Parys style) with
perspective strengthening. A diagonal D >= 0 with Q = A^T A - D >= 0 (D = 0 on the bias) moves
into a perspective term with e_i = D_ii + ridge > 0:

    c(z) = min { 1/2 w^T Q w - (A^T b)^T w + 1/2 ||b||^2 + 1/2 sum_i e_i w_i^2 / z_i
                 : C w <= slack },

which equals the model's objective on support z for binary z and is convex on [0,1]^d. At a
point z_t with optimum w* and multipliers mu* >= 0, v = Q w* - A^T b + C^T mu* (on the weight
coordinates; on the support v_i = -e_i w*_i / z_t,i) gives the valid cut

    eta >= c(z_t) + sum_i g_i (z_i - z_t,i),   g_i = -v_i^2 / (2 e_i).

Without D a pruned coordinate's slope would be v_i^2 / (2 ridge): useless for a tiny ridge.
Two diagonals are used (see :func:`perspective_diagonals`); at a binary z the QP does not
depend on D, so one QP gives a cut for each.

First supports: the warm start's, top-k of |w0|, |w0| ||a_i|| and |A^T b_i| / ||a_i||. A few
Kelley rounds on the LP relaxation add cuts at fractional z (the same QP with e_i / z_i on the
diagonal). Then the master MILP (scipy's HiGHS) minimises eta over all cuts with sum z = k (no
loss: c never increases when coordinates are added), the N:M group rows and eta <= UB; its dual
bound is a lower bound LB, the best evaluated support (improved by 1-swap descent) the upper
bound UB, and its new support adds a cut. A neuron is done when (UB - LB) / UB <= gap_tol.
Each support's QP (Clarabel; Cholesky when Omega^c is empty) is the exact refit of the ReLU
model on it, so ``refit`` is inherent.

Limits: the search is exponential in the worst case, so d <= ``max_inputs``. Measured on one
CPU core: d=10 at 50% sparsity in 0.1-0.7 s, d=20 in 1-6 s, d=30 keeping 21-22 in 0.3-10 s,
keeping 20 in ~20 s; d=30 at 50% sparsity was still 8-62% from proven after 60 s (under the
ReLU constraints the perspective bound is weak). ``max_cuts`` caps the master iterations per neuron,
``time_limit`` the seconds per layer (shared evenly over the neurons still to do) and
``node_limit`` the nodes of each master MILP. On a limit the best support found is returned
with its proven bounds in ``certificate``.
"""

from __future__ import annotations

import itertools
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

_SECONDS_PER_NEURON = 60.0  # the default time limit
_QP_TOL = 1e-11
_ROOT_ROUNDS = 20  # LP rounds before the first MILP: more cuts there also slow every MILP
_ZERO_Z = 1e-6  # smaller LP entries are rounded to 0 (the cut is then taken at that point)
_STATUS_ORDER = ("optimal", "stalled", "master_failed", "cut_limit", "node_limit", "time_limit")


@dataclass
class Point:
    """c(z) at one z: value, optimal w (length p), multipliers mu, v (for the first diagonal
    used) and cut slopes g: a row per diagonal at a binary z, one at a fractional z."""

    value: float
    w: np.ndarray
    mu: np.ndarray
    v: np.ndarray
    g: np.ndarray


class NeuronModel:
    """The ReLU l0 model of one output neuron with its perspective splits.

    Parameters
    ----------
    Xa : (n, p) inputs, with the ones column last when ``has_bias``.
    w0a : (p,) original weights (and bias).
    has_bias : whether the last coordinate is a free, unpenalised bias.
    ridge : absolute ridge on the weights (> 0).
    slack : allowed pre-activation on the samples where the original neuron is off.
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
        # each valid diagonal gives its own cut at a binary point for free; the two differ
        # enough (uniform in the scaled Gram vs an SDP's best total) to halve the iterations
        self.D = np.vstack(perspective_diagonals(self.G, has_bias))
        self.e = self.D + ridge
        self.cache: dict[bytes, Point] = {}

    def evaluate(self, z: np.ndarray, which: int = 0) -> Point:
        """c(z) with its cut slopes; z is a bool support (cached) or a float point of [0,1]^d,
        where c depends on the diagonal: row ``which`` of ``D`` is used."""
        z = np.asarray(z)
        if z.dtype != bool:
            return self._solve(z.astype(float), which)
        key = z.tobytes()
        if key not in self.cache:
            self.cache[key] = self._solve(z.astype(float), 0)
        return self.cache[key]

    def _solve(self, z: np.ndarray, which: int) -> Point:
        on = z > 0  # z_i = 0 forces w_i = 0 through the perspective term
        binary = bool(np.all(z[on] == 1.0))
        cols = np.flatnonzero(on)
        # the perspective turns D_i into e_i / z_i on the diagonal: the plain ridge at z_i = 1
        extra = self.e[which, cols] / z[cols] - self.D[which, cols]
        if self.has_bias:
            cols, extra = np.append(cols, self.d), np.append(extra, 0.0)
        w = np.zeros(self.p)
        mu = np.zeros(len(self.C))
        if len(self.b) and len(cols):  # a dead neuron (empty Omega) is fitted by w = 0
            P = self.G[np.ix_(cols, cols)] + np.diag(extra)
            if len(self.C):
                w[cols], mu = _clarabel_qp(P, -self.Atb[cols], self.C[:, cols], self.slack)
            else:  # nothing has to stay switched off: ridge least squares
                w[cols] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(P), self.Atb[cols])
        ww = w[: self.d]
        r = self.A @ w - self.b
        value = 0.5 * float(r @ r) + 0.5 * float(extra[: on.sum()] @ ww[on] ** 2)
        rows = slice(None) if binary else slice(which, which + 1)
        D, e = self.D[rows], self.e[rows]
        v = (self.G @ w - self.Atb + self.C.T @ mu)[: self.d] - D * ww
        return Point(value, w, mu, v[0], -(v**2) / (2 * e))


def perspective_diagonals(G: np.ndarray, has_bias: bool) -> list[np.ndarray]:
    """Diagonals D >= 0 on the weights with G - diag(D, 0) positive semidefinite.

    With a bias the weights' block must dominate the bias's Schur complement, so both come
    from the centred Gram Gc scaled to a unit diagonal, M = S^-1 Gc S^-1: the uniform
    D = lambda_min(M) S^2, and S^2 delta with delta maximising sum(delta) s.t. M - diag(delta)
    is PSD (an SDP, solved by Clarabel; skipped if it fails). Both are shrunk by 0.99 so that
    Q stays PSD through round-off.
    """
    Gc = G
    if has_bias:
        n_on = G[-1, -1]
        Gc = G[:-1, :-1] - np.outer(G[:-1, -1], G[:-1, -1]) / n_on if n_on > 0 else G[:-1, :-1]
    diag = np.diag(Gc).copy()
    live = np.flatnonzero(diag > 1e-12 * max(float(diag.max(initial=0.0)), 1e-300))
    out = [np.zeros(len(diag))]
    if len(live) == 0:
        return out
    s = np.sqrt(diag[live])
    M = Gc[np.ix_(live, live)] / np.outer(s, s)
    out[0][live] = 0.99 * max(float(np.linalg.eigvalsh(M)[0]), 0.0) * s**2
    delta = _max_diagonal_sdp(M)
    if delta is not None:
        out.append(np.zeros(len(diag)))
        out[1][live] = 0.99 * delta * s**2
    return out


def _max_diagonal_sdp(M: np.ndarray) -> np.ndarray | None:
    """max sum(delta) s.t. M - diag(delta) PSD, delta >= 0; None unless solved and verified."""
    n = len(M)
    # Clarabel's PSD triangle: the upper triangle by columns, off-diagonals scaled by sqrt(2)
    iu, ju = np.triu_indices(n)
    order = np.lexsort((iu, ju))
    iu, ju = iu[order], ju[order]
    svec = M[iu, ju] * np.where(iu == ju, 1.0, np.sqrt(2.0))
    diag_pos = np.flatnonzero(iu == ju)
    A = sp.vstack([-sp.identity(n),
                   sp.csc_matrix((np.ones(n), (diag_pos, np.arange(n))), shape=(len(iu), n))])
    settings = clarabel.DefaultSettings()
    settings.verbose = False
    sol = clarabel.DefaultSolver(
        sp.csc_matrix((n, n)), -np.ones(n), A.tocsc(), np.concatenate([np.zeros(n), svec]),
        [clarabel.NonnegativeConeT(n), clarabel.PSDTriangleConeT(n)], settings,
    ).solve()
    if sol.status != clarabel.SolverStatus.Solved:
        return None
    delta = np.maximum(np.asarray(sol.x), 0.0)
    if np.linalg.eigvalsh(M - np.diag(0.99 * delta))[0] < 0:
        return None
    return delta


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
    # Clarabel's dual z satisfies P x + q + C^T z = 0, so it is mu
    return np.asarray(sol.x), np.maximum(np.asarray(sol.z), 0.0)


class _Master:
    """min eta over the cuts, sum z = k and the N:M group rows; HiGHS solves it from scratch."""

    def __init__(self, d: int, k: int, groups: tuple[int, int] | None, scale: float):
        self.d, self.scale = d, scale  # eta is held in units of ``scale`` (the first UB)
        self.seen: set[bytes] = set()  # binary points with their cuts in the master
        self.rows, self.lo, self.hi = [np.append(np.ones(d), 0.0)], [k], [k]
        if groups is not None:
            n_keep, width = groups
            for g in range(d // width):
                self.rows.append(np.append(np.arange(d) // width == g, False).astype(float))
                self.lo.append(0)
                self.hi.append(n_keep)

    def add_cut(self, z: np.ndarray, pt: Point) -> None:
        """eta - g^T z >= c(z_t) - g^T z_t, one row per diagonal."""
        if z.dtype == bool:
            self.seen.add(z.tobytes())
        for g in pt.g:
            self.rows.append(np.append(-g / self.scale, 1.0))
            self.lo.append((pt.value - float(g @ z)) / self.scale)
            self.hi.append(np.inf)

    def solve(self, time_left: float, node_limit: int | None, gap: float, ub: float,
              relax: bool = False) -> tuple[np.ndarray | None, float, int]:
        """Master optimum z (bool, or float if ``relax``), its lower bound and scipy's status."""
        d = self.d
        opts = {"time_limit": max(time_left, 1e-3), "mip_rel_gap": gap,
                # not in scipy's list, passed to HiGHS verbatim: its default 1e-6 absolute
                # tolerances are too coarse for a 1e-7 relative proof
                "mip_abs_gap": 1e-12, "primal_feasibility_tolerance": 1e-9}
        if node_limit is not None:
            opts["node_limit"] = node_limit
        cons = LinearConstraint(np.vstack(self.rows), self.lo, self.hi)
        # eta <= UB loses nothing and lets HiGHS prune; infeasible then means LB >= UB
        bounds = Bounds(np.zeros(d + 1), np.append(np.ones(d), ub * (1 + 1e-9) / self.scale))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
            for presolve in (True, False):  # HiGHS's presolve now and then fails on these rows
                res = milp(np.append(np.zeros(d), 1.0), bounds=bounds, constraints=cons,
                           integrality=np.append(np.full(d, 0 if relax else 1), 0),
                           options={**opts, "presolve": presolve})
                if res.status != 4 or "limit" in str(res.message).lower():
                    break  # (a limit, HiGHS's "solution limit" under node_limit, is no failure)
        code = res.status
        if code == 4 and "limit" in str(res.message).lower():
            code = 1  # scipy's "other" for HiGHS's node/solution limits: an iteration limit
        if code == 2:
            return None, ub, 0
        z = None
        if res.x is not None:
            x = res.x[:d]
            z = np.where(x < _ZERO_Z, 0.0, np.minimum(x, 1.0)) if relax else x > 0.5
        # the dual bound, not the incumbent: with a loose mip_rel_gap only it is a lower bound
        bound = res.get("mip_dual_bound")
        if bound is None or not np.isfinite(bound):
            bound = res.fun if code == 0 and relax else 0.0
        return z, max(bound, 0.0) * self.scale, code


def _check_options(ridge, slack, gap_tol, max_cuts, time_limit, node_limit, max_inputs,
                   warm_start, refit) -> None:
    def is_int(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    def is_num(x) -> bool:
        return is_int(x) or isinstance(x, (float, np.floating))

    inf = np.inf
    checks = [
        ("ridge", ridge, is_num(ridge) and 0 < ridge < inf, "a finite number > 0"),
        ("slack", slack, is_num(slack) and 0 <= slack < inf, "a finite number >= 0"),
        ("gap_tol", gap_tol, is_num(gap_tol) and 0 <= gap_tol < 1, "a number in [0, 1)"),
        ("max_cuts", max_cuts, is_int(max_cuts) and max_cuts >= 1, "an integer >= 1"),
        ("max_inputs", max_inputs, is_int(max_inputs) and max_inputs >= 1, "an integer >= 1"),
        ("node_limit", node_limit, node_limit is None or is_int(node_limit) and node_limit >= 1,
         "None or an integer >= 1"),
        ("time_limit", time_limit,
         time_limit is None or is_num(time_limit) and 0 < time_limit < inf, "None or seconds > 0"),
        ("warm_start", warm_start, warm_start is None or isinstance(warm_start, str),
         "a registered method name or None"),
        ("refit", refit, isinstance(refit, bool), "True or False"),
    ]
    for name, val, ok, what in checks:
        if not ok:
            raise InvalidInputError(f"{name} must be {what}, got {val!r}")


def _round_support(z: np.ndarray, k: int, groups: tuple[int, int] | None) -> np.ndarray:
    """The k (or N per group of M) largest entries of z as a bool support."""
    if groups is None:
        return row_topk(z[None, :], k)[0]
    return nm_topk(z[None, :], *groups)[0]


def _swap_descent(model: NeuronModel, z: np.ndarray, groups: tuple[int, int] | None,
                  deadline: float) -> list[np.ndarray]:
    """First-improvement 1-swap descent from support z; returns the improving supports.

    Moves are tried in the order the cut suggests: drop the kept weight whose slope
    e_i w_i^2 / 2 is smallest, add the pruned one whose slope v_j^2 / (2 e_j) is largest.
    """
    path, improved = [], True
    while improved and time.perf_counter() < deadline:
        improved = False
        pt = model.evaluate(z)
        slope = -pt.g[0]
        drop = np.flatnonzero(z)[np.argsort(slope[z])]
        add = np.flatnonzero(~z)[np.argsort(-slope[~z])]
        for i, j in itertools.product(drop, add):
            if groups is not None and i // groups[1] != j // groups[1]:
                continue
            cand = z.copy()
            cand[i], cand[j] = False, True
            if model.evaluate(cand).value < pt.value * (1 - 1e-12):
                z, improved = cand, True
                path.append(z)
                break
    return path


def _feasible(z: np.ndarray, k: int, groups: tuple[int, int] | None) -> bool:
    if int(z.sum()) != k:
        return False
    return groups is None or bool(np.all(z.reshape(-1, groups[1]).sum(axis=1) <= groups[0]))


@register("l0-cutting-plane",
          "ReLU l0 model solved to proven optimality by perspective outer approximation (small d)",
          whole_model=False)  # needs the layer's samples, ReLU, small d: solve_layer only
def solve(problem: LayerProblem, *, ridge: float = 1e-6, slack: float = 0.0,
          gap_tol: float = 1e-7, max_cuts: int = 500, time_limit: float | None = None,
          node_limit: int | None = None, max_inputs: int = 64,
          warm_start: str | None = "l0-admm", refit: bool = True) -> LayerResult:
    """Prune a ReLU layer with the exact l0 model, one neuron at a time (see the module doc).

    Parameters
    ----------
    ridge : ridge on the weights relative to mean(diag H); > 0, it keeps the cuts finite.
    slack : pre-activation allowed on the samples where the original neuron is off (>= 0).
    gap_tol : a neuron is solved when (UB - LB) / UB <= gap_tol.
    max_cuts : master MILP iterations per neuron.
    time_limit : seconds for the whole layer; None gives 60 s per neuron.
    node_limit : branch-and-bound nodes per master MILP (None: no limit).
    max_inputs : largest d accepted; the exact search is exponential in the worst case.
    warm_start : registered method run once on the layer; each row's mask is a first support.
    refit : accepted for API uniformity; every support's QP is already its exact refit.

    Returns
    -------
    LayerResult with status "optimal" when every neuron's gap is proven, else the worst limit
    hit ("time_limit", "node_limit", "cut_limit", "master_failed" or "stalled"). Its
    ``certificate`` holds per-neuron lists lower_bound, upper_bound, gap, iterations and
    status, and the total relu_objective and the max_violation of C w <= slack; ``history``
    one dict (neuron, iter, lb, ub) per master MILP.
    """
    t0 = time.perf_counter()
    _check_options(ridge, slack, gap_tol, max_cuts, time_limit, node_limit, max_inputs,
                   warm_start, refit)
    if problem.activation != "relu":
        raise InvalidInputError(
            f"l0-cutting-plane solves the ReLU layer's l0 model (the fit on Omega, the bounds "
            f"off it); this layer's activation is {problem.activation!r}: pass "
            f"activation='relu' for a ReLU layer, or use iht / l0-admm for least squares")
    if problem.X is None:
        raise InvalidInputError("l0-cutting-plane needs the calibration inputs X, not only "
                                "the Gram")
    m, d, pat = problem.m, problem.d, problem.pattern
    if d > max_inputs:
        raise InvalidInputError(
            f"l0-cutting-plane proves optimality only for small layers: d={d} exceeds "
            f"max_inputs={max_inputs}; use method 'l0-admm' for larger layers"
        )
    if pat.kind == "layer" and m > 1:
        raise InvalidInputError(
            "l0-cutting-plane is exact per neuron and the layer separates over neurons: it "
            "needs pattern='row' or 'N:M' (pattern='layer' only with a single output, m=1)"
        )
    k = problem.nnz if pat.kind == "layer" else problem.row_nnz
    groups = (pat.n, pat.m) if pat.kind == "nm" else None
    has_bias = problem.bias is not None
    Xa = np.asarray(problem.X, dtype=np.float64)
    if has_bias:
        Xa = np.hstack([Xa, np.ones((len(Xa), 1))])
    ridge_abs = float(ridge) * problem.mean_diag()
    budget = _SECONDS_PER_NEURON * m if time_limit is None else float(time_limit)
    deadline = t0 + budget
    warm_mask = run(problem, warm_start).mask if warm_start is not None else None

    Wa = np.zeros(problem.W0a.shape)
    mask = np.zeros((m, d), dtype=bool)
    history: list[dict] = []
    cert: dict = {key: [] for key in ("lower_bound", "upper_bound", "gap", "iterations",
                                      "status")}
    violation = 0.0
    for j in range(m):
        now = time.perf_counter()
        model = NeuronModel(Xa, problem.W0a[j], has_bias, ridge_abs, float(slack))
        starts = [] if warm_mask is None else [np.asarray(warm_mask[j], dtype=bool)]
        w0 = problem.W0[j]
        col = np.sqrt(np.maximum(np.diag(model.G)[:d], 1e-300))
        # cheap first supports: magnitude, magnitude times input scale, correlation with b
        for score in (np.abs(w0), np.abs(w0) * col, np.abs(model.Atb[:d]) / col):
            starts.append(_round_support(score, k, groups))
        best, lb, iters, status = _solve_neuron(
            model, starts, k, groups, gap_tol, max_cuts, now + (deadline - now) / (m - j),
            node_limit, history, j)
        pt = model.evaluate(best)
        Wa[j], mask[j] = pt.w, best
        gap = max(pt.value - lb, 0.0) / pt.value if pt.value > 0 else 0.0
        for key, val in zip(cert, (lb, pt.value, gap, iters, status), strict=True):
            cert[key].append(val)
        if len(model.C):
            violation = max(violation, float(np.max(model.C @ pt.w)) - float(slack))

    status = max(cert["status"], key=_STATUS_ORDER.index)
    certificate = {**cert, "relu_objective": float(sum(cert["upper_bound"])),
                   "max_violation": max(violation, 0.0), "gap_tol": float(gap_tol)}
    settings = {"ridge": float(ridge), "ridge_abs": ridge_abs, "slack": float(slack),
                "gap_tol": float(gap_tol), "max_cuts": int(max_cuts), "time_limit": budget,
                "node_limit": node_limit, "max_inputs": int(max_inputs), "k": int(k),
                "warm_start": warm_start, "refit": refit}
    return finalize(problem, Wa, mask, solver="l0-cutting-plane", settings=settings, t0=t0,
                    iterations=int(sum(cert["iterations"])), status=status, history=history,
                    certificate=certificate)


def _solve_neuron(model: NeuronModel, starts: list[np.ndarray], k: int,
                  groups: tuple[int, int] | None, gap_tol: float, max_cuts: int,
                  deadline: float, node_limit: int | None, history: list[dict],
                  neuron: int) -> tuple[np.ndarray, float, int, str]:
    """Outer approximation for one neuron: best support, lower bound, iterations, status."""
    points = [np.ones(model.d, dtype=bool), *starts]  # the full support's cut is valid too
    cands = [z for z in starts if _feasible(z, k, groups)] or [starts[-1]]
    best = min(cands, key=lambda z: model.evaluate(z).value)
    ub = model.evaluate(best).value
    master = _Master(model.d, k, groups, scale=max(ub, 1e-300))
    for z in points:
        master.add_cut(z, model.evaluate(z))
    floor = 1e-12 * 2 * model.const  # an absolute gap at the round-off of the objective itself
    lb, it, exact = 0.0, 0, False

    def closed() -> bool:
        return ub - lb <= max(gap_tol * ub, floor)

    def record(z: np.ndarray) -> None:
        nonlocal best, ub
        pt = model.evaluate(z)
        master.add_cut(z, pt)
        if pt.value < ub and _feasible(z, k, groups):
            best, ub = z, pt.value
            for zs in _swap_descent(model, z, groups, deadline):
                master.add_cut(zs, model.evaluate(zs))
                best, ub = zs, model.evaluate(zs).value

    # Kelley rounds on the LP relaxation, each also trying the LP point rounded to a support
    for _ in range(_ROOT_ROUNDS):
        if closed() or time.perf_counter() >= deadline:
            break
        zf, bound, code = master.solve(deadline - time.perf_counter(), None, 0.0, ub, relax=True)
        lb = max(lb, min(bound, ub))
        if code != 0 or zf is None:
            break
        for which in range(len(model.D)):
            master.add_cut(zf, model.evaluate(zf, which))
        zr = _round_support(zf, k, groups)
        if zr.tobytes() not in master.seen:
            record(zr)
    while not closed():
        if it >= max_cuts:
            return best, lb, it, "cut_limit"
        if time.perf_counter() >= deadline:
            return best, lb, it, "time_limit"
        # an inexact master (a quarter of the current gap) is cheaper and still gives a new
        # support and a valid bound; it goes exact once it returns a support already known
        mgap = gap_tol / 10 if exact else max(gap_tol / 10, 0.25 * (ub - lb) / ub)
        z, bound, code = master.solve(deadline - time.perf_counter(), node_limit, mgap, ub)
        it += 1
        lb = max(lb, min(bound, ub))
        fresh = z is not None and z.tobytes() not in master.seen
        if fresh:
            record(z)
        history.append({"neuron": neuron, "iter": it, "lb": lb, "ub": ub})
        if fresh or closed():
            exact = False
        elif code == 0 and not exact:
            exact = True
        elif code == 0:  # an exact master repeats a known support below UB: round-off
            return best, lb, it, "stalled"
        elif code == 1:
            late = time.perf_counter() >= deadline
            return best, lb, it, "time_limit" if late else "node_limit"
        else:
            return best, lb, it, "master_failed"
    return best, lb, it, "optimal"
