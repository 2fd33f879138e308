"""Net-Trim by ADMM: the fast engine (Aghasi, Abdi, Nguyen, Romberg; SIAM J. Math. Data
Science 2020, "Fast convex pruning of deep neural networks"; ADMM after Boyd et al. 2011).

Solves the same programs as ``nettrim-cvx`` (see ``nettrim_rules.py``) with the iteration of
``nettrim_engine.py``: one Cholesky factor shared by every neuron and iteration, fused Numba
kernels for the projection, the soft-threshold and the dual updates, over-relaxation, and
float32 iterations finished in float64 (with float32 products on differences from float64
references: ``NetTrimADMM.to_float64(refine=True)``).

It stops when three things hold at a check: Boyd's primal and dual residuals are within their
absolute + relative tolerances, the l1 of the iterate moved by at most ``obj_tol`` (relative)
over the last 20 or more iterations (or its fall is slowing so that what is left of it,
extrapolated, is at most 5 obj_tol: ``_tail_small``), and the returned W (exactly sparse) is
feasible to ``feas_tol``: dist(Xa W^T, C) <= feas_tol * eps, checked with a float64 product.
W is the iterate itself when that is feasible, else the iterate moved on its own support onto
the constraint set (``nettrim_feasibility.restore``: feasible to rounding, the l1 raised by
1e-6 to 2e-5, at most RESTORE_L1 on this stop):
the ADMM's objective settles long before its exactly sparse iterate is feasible by itself
(784->300 MNIST: 460 iterations for that, where the l1 is within 2e-5 of the optimum after
200), so float32 iterations can stop too; float64 ones (with float32 products on differences)
take over when the restoration fails. The dual residual and the settling test may be replaced
by a certified duality gap: with the primal residual within tolerance, the l1 moved by at most
``gap_tol`` over the last 20 or more iterations (only then is the bound's float64 product
taken) and W feasible, (l1(W) - a weak-duality lower bound) / l1(W) <= ``gap_tol``.
Otherwise the result says so (status "max_iter", ``certificate["converged"]`` False, the
residual history).

Inputs that are zero in every sample (``live_columns``) are dropped before the iterations:
their weights are zero at every optimum, and each iteration's two products shrink with them.

Penalties. ADMM's speed hangs on them. rho (on W) is in units of 1 / mean|W0| and rho_fit (on
Xa W^T) in units of mean|W0| / mean(Y^2 on Omega), the scales that make both dual variables
O(1); the constants come from sweeps over the layers of a 784-300-100-10 MNIST MLP (P = 2000,
alpha = 1.9). Before the restoration (iterations to a 1e-4 l1 gap and a 1e-5 violation of the
iterate itself) rho_fit 25 x1 / x2 took 270 / 210 on 300->100, 430 / 590 on 784->300. With it
(iterations to the stopping rule above, l1 gap to a tight reference; first version of the rule)
rho_fit 25 x0.35 / x0.5 / x0.7 / x1 / x2 took 180 / 200 / 240 / 300 / 460 on 784->300 and
320 / 220 / 180 / 200 / 360 on 300->100; with the rule of stop 21 (obj_tol 2e-6, RESTORE_L1 1e-5)
rho_fit 25 x0.5 / x0.7 / x0.8 / x1 took 240 / 280 / 300 / 360 on 784->300 and 320 / 240 /
220 / 240 on 300->100 (gaps 5e-6 to 1.1e-5): x0.8 is the default. rho mattered less
(x0.5 to x2 within 1.4x, but rho x2 with rho_fit x0.5 stopped 2.2e-4 above the optimum on
300->100: the settling test is a heuristic, and penalties far from these defaults can fool
it). Those sweeps were at n = 2000; with more samples a lower rho_fit pays, but not in
proportion to 1/n (the fit term's scale): at n = 10000, rho_fit x1 / x0.67 / x0.5 / x0.45 /
x0.2 took 480 / 340 / 320 / 320 / 620 iterations on 784->300 and x1 / x0.7 / x0.67 / x0.45
560 / 500 / 540 / 700 on 300->100; at n = 5000, x1 / x0.84 / x0.63 took 380 / 320 / 260 on
784->300 and x1 / x0.84 460 / 380 on 300->100. rho_fit is therefore scaled by
(2000 / n)^(1/4) above n = 2000, which helped all four (x0.67 at 10000; x0.80 at 5000: 320
and 420 iterations), where the best factor for one layer would hurt the other. Boyd's
residual balancing (section 3.4.1) is available (``adaptive_rho``) but off by default: on
those layers it drove rho an order of magnitude away from the best fixed value and took
5-10x more iterations.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import check_nonnegative, check_positive, finalize
from layertrim.solvers.nettrim_cvx import (
    augmented_inputs,
    certificate,
    check_target_sparsity,
    targets_for,
)
from layertrim.solvers.nettrim_engine import NetTrimADMM, relative_violation
from layertrim.solvers.nettrim_feasibility import restore, xa_wt
from layertrim.solvers.nettrim_rules import (
    NetTrimTargets,
    _check_gain,
    bisect_gain,
    check_eps_min,
    floor_gain,
    max_gain,
    pruned_fraction,
    radius_at,
    target_met,
)
from layertrim.solvers.registry import register
from layertrim.validate import check_bool

RHO_W = 2.0  # rho = RHO_W / mean|W0|
RHO_FIT = 20.0  # rho_fit = RHO_FIT * mean|W0| / mean(Y^2 on Omega) * (FIT_N_REF / n)^FIT_N_EXP
FIT_N_REF, FIT_N_EXP = 2000, 0.25  # ... the last factor only for n > FIT_N_REF (see above)
BALANCE_MU, BALANCE_TAU = 10.0, 2.0  # Boyd's residual balancing constants
# mixed precision: float32 hands over to float64 when the violation is within SWITCH_FACTOR *
# feas_tol, or has not improved by 10% in SWITCH_STALE checks (float32's floor: about 5e-5 on
# a 10000 x 301 layer, where its rounding in the products shows)
SWITCH_FACTOR, SWITCH_STALE = 3.0, 3
_PRECISIONS = ("mixed", "float32", "float64")
# the target-sparsity search runs loose float32 solves, and one full solve confirms the gain
SEARCH_TOLERANCES = {"reltol": 1e-2, "dual_reltol": 1e-1, "feas_tol": 1e-2, "gap_tol": 1e-3,
                     "obj_tol": 1e-3}
SEARCH_MAX_ITER = 400
# an unconverged search solve whose pruned fraction is this far from the target still places
# the target on one side: finishing it cost the CNN's cascade layers 400->120 and 120->84 up
# to 10000 iterations at gains the search then left (fractions 0.35 and 0.86 for targets of
# 0.55 and 0.4); such a point is tentative: the search solves it accurately when it stays an
# end of the bracket that the other end keeps moving towards (it may be on the wrong side),
# and an accurate solve always confirms the gain the search settles on
SEARCH_TRUST = 0.05
DUAL_RELTOL_RELU, DUAL_RELTOL_LINEAR = 3e-2, 1e-3  # the default dual_reltol (see solve)
SETTLE_WINDOW = 20  # iterations over which the l1's change is measured against obj_tol
TAIL_STEP, TAIL_LEFT = 2.0, 5.0  # _tail_small: the last window's fall, the extrapolated rest
RESTORE_L1 = 2e-5  # the most a restoration may raise the l1 (relative) on Boyd's stop (see
# obj_tol in solve)
RESTORE_SKIP = 2.0  # no restoration while the last one predicts this many RESTORE_L1
BIAS_RATIO = 10.0  # mean|b0| / mean|W0| above which the ones column is rescaled (see solve)


def default_penalties(W0: np.ndarray, t: NetTrimTargets) -> tuple[float, float]:
    """(rho, rho_fit) from the scales of the weights and the targets."""
    w = float(np.mean(np.abs(W0))) or 1.0
    y = t.Y if t.omega is None else t.Y[t.omega]
    y2 = float(np.mean(y**2)) or 1.0
    fewer = min(1.0, FIT_N_REF / max(1, t.Y.shape[0])) ** FIT_N_EXP
    return RHO_W / w, RHO_FIT * w / y2 * fewer


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 1 <= alpha < 2:
        raise InvalidInputError(f"alpha (over-relaxation) must be in [1, 2), got {alpha!r}")
    return float(alpha)


def _feasible64(eng: NetTrimADMM, W: np.ndarray, eps, feas_tol: float, res: dict) -> bool:
    """The violation within feas_tol with a float64 product: a float32 iteration's own check
    can round a hair under the tolerance (then the iterations go on)."""
    if eng.dtype == np.float64:
        return True
    v = res["violation"] = relative_violation(xa_wt(eng.Xa64, W), eng.t, eps)
    return v <= feas_tol


def _restored(eng: NetTrimADMM, W: np.ndarray, v: float, eps, d: int, feas_tol: float,
              res: dict, l1_budget: float | None = None) -> tuple[np.ndarray, float, bool]:
    """(W, its violation, whether it is feasible to feas_tol): W itself when it is (checked
    with a float64 product), else W moved on its support by ``nettrim_feasibility.restore``
    when that makes it feasible and, with ``l1_budget``, raises its l1 by at most that much
    (relative). The ADMM's objective settles long before its exactly sparse iterate is feasible
    (see that module): on the 784->300 MNIST layer the l1 is within 2e-5 of the optimum after
    200 iterations, and W reached feas_tol = 1e-5 by itself at 460."""
    if v <= feas_tol and _feasible64(eng, W, eps, feas_tol, res):
        return W, res["violation"], True
    if eng.support is not None:  # the refit's program is a fit, not the l1: left to the ADMM
        return W, v, False
    t0 = time.perf_counter()
    Wr = restore(eng.Xa64, W, eng.t, eps, d, tol=0.1 * feas_tol)
    vr = relative_violation(xa_wt(eng.Xa64, Wr), eng.t, eps)
    eng.timing["restore"] = eng.timing.get("restore", 0.0) + time.perf_counter() - t0
    l1, l1r = float(np.abs(W[:, :d]).sum()), float(np.abs(Wr[:, :d]).sum())
    res["restore_attempt"] = {"violation": vr, "l1_change": (l1r - l1) / max(l1, 1e-300)}
    ok = vr <= feas_tol and (l1_budget is None or l1r - l1 <= l1_budget * max(l1, 1e-300))
    return (Wr, vr, True) if ok else (W, v, False)


def _restore_hopeless(tried: tuple[float, float] | None, v: float) -> bool:
    """Whether a restoration now would raise the l1 by more than RESTORE_SKIP * RESTORE_L1,
    predicted from the last one: its l1 change scales with the violation it corrects (a
    least-norm change of the weights is linear in it). At high gains the restored W stays
    above the l1 budget for hundreds of iterations, and an attempt at every check cost 10-20%
    of the solve (784->300 at gain 0.5: 22 attempts, 3.5 s of 39)."""
    if tried is None:
        return False
    v_then, change = tried
    return change * v / v_then > RESTORE_SKIP * RESTORE_L1


def _settled(seen: list[tuple[int, float]], it: int, l1: float, obj_tol: float,
             tail: bool = False) -> bool:
    """Whether the l1 moved by at most obj_tol (relative) over the last SETTLE_WINDOW or more
    iterations: measured against the latest check at least that far back, so that its meaning
    does not change with check_every (checks one iteration apart settled 3e-4 above the
    optimum). Over the last 3 SETTLE_WINDOW iterations the checks' l1 must also fall (the
    usual approach from above; rises of 0.1 obj_tol allowed) or stay within 3 obj_tol: an l1
    oscillating by 1e-3 over ~100 iterations (a small layer at gain 0.9, Boyd's residuals met
    throughout) passed the first test by chance at a turn, 5e-4 above the optimum. An l1 that
    rises to its optimum (an iterate approaching from the infeasible side) waits for the
    range: 20 more iterations on some small layers, none on the MNIST ones. With ``tail``,
    an l1 still falling faster passes too when ``_tail_small`` says what is left of its fall is
    small, and every check of the last 60 iterations fell (checks closer than the windows it
    samples could hide an oscillation from it)."""
    back = _window_back(seen, it)
    if back is None:
        return False
    recent = [l1_then for it_then, l1_then in seen if it_then >= it - 3 * SETTLE_WINDOW]
    recent.append(l1)
    slack = 0.1 * obj_tol * max(l1, 1e-300)  # rounding-size rises do not count
    falling = bool(np.all(np.diff(recent) <= slack))
    if tail and falling and _tail_small(seen, it, l1, obj_tol):
        return True
    if abs(l1 - back[1]) > obj_tol * max(l1, 1e-300):
        return False
    return falling or max(recent) - min(recent) <= 3 * obj_tol * max(l1, 1e-300)


def _window_back(seen: list[tuple[int, float]], it: int) -> tuple[int, float] | None:
    """The latest check (iteration, l1) at least SETTLE_WINDOW iterations before ``it``."""
    back = [c for c in seen if c[0] <= it - SETTLE_WINDOW]
    return back[-1] if back else None


def _tail_small(seen: list[tuple[int, float]], it: int, l1: float, obj_tol: float) -> bool:
    """Whether the l1's fall over the last SETTLE_WINDOW iterations is at most TAIL_STEP *
    obj_tol (relative) and what is left of it, extrapolated as a geometric series, at most
    TAIL_LEFT * obj_tol. The l1 must have fallen over each of the last three windows; the ratio
    is the largest of the two between them (the slower, as the fall slows with time). The plain
    test (a fall of at most obj_tol over one window) waits for the slow end of that series:
    on the 784->300 MNIST layer at P = 10000 it stopped 80 iterations (6 s) later, 5e-6 nearer
    an optimum it was already within 1.3e-5 of. Replayed on the checks of ten MNIST MLP
    layers and gains (784->300 and 300->100, P = 500-10000, gains 0.02-0.1), this test ended
    the settling wait 0-80 iterations earlier, never more than 1.3e-5 above the optimum (before
    the restoration); with TAIL_STEP at 3 instead of 2 one stopped 4e-5 above it. The
    extrapolation is geometric: on a tail that slows further (1/k) the true rest is up to
    about twice the estimate."""
    pts = [l1]
    last = it
    for _ in range(3):
        back = _window_back(seen, last)
        if back is None:
            return False
        last, v = back
        pts.append(v)
    falls = [pts[k + 1] - pts[k] for k in range(3)]  # the latest first
    scale = max(l1, 1e-300)
    if not all(f > 0 for f in falls) or falls[0] > TAIL_STEP * obj_tol * scale:
        return False
    ratio = max(falls[0] / falls[1], falls[1] / falls[2])
    return ratio < 1 and falls[0] * ratio / (1 - ratio) <= TAIL_LEFT * obj_tol * scale


def _l1_of_q(eng: NetTrimADMM, d: int, thresh: float) -> float:
    """The l1 of the iterate's weights (Q, thresholded as the returned W is), in float64."""
    q = np.abs(np.asarray(eng.Q[:d], dtype=np.float64))
    return float(q[q > thresh].sum())


def _certified_gap(W: np.ndarray, bound: float, d: int, res: dict | None = None) -> float:
    """(l1(W) - bound) / l1(W) for the dual's weak-duality ``bound``
    (``NetTrimADMM.dual_bound``): at least W's true relative gap when W is feasible."""
    l1 = float(np.abs(W[:, :d]).sum())
    gap = 0.0 if l1 == 0 else (l1 - bound) / l1
    if res is not None:
        res["gap"] = gap
    return gap


def live_columns(Xa: np.ndarray, d: int) -> np.ndarray:
    """Indices of Xa's columns the ADMM keeps: every weight column with a nonzero entry, and
    the bias column. A weight on an all-zero input column (a pixel that is blank in every
    calibration image, a dead unit of the previous layer) moves no output and costs l1, so it
    is zero at every optimum; dropping the column shrinks both products of every iteration
    (145 of 784 MNIST pixels are blank in 2000 training images)."""
    live = np.ones(Xa.shape[1], bool)
    live[:d] = np.any(Xa[:, :d] != 0, axis=0)
    if not live[:d].any():  # nothing to fit with: leave the (trivial) problem as it is
        live[:d] = True
    return np.flatnonzero(live)


class _TimeUp(Exception):
    """time_limit ran out between two solves of the sparsity search."""


def run_admm(eng: NetTrimADMM, eps, *, d: int, thresh: float, abstol: float, reltol: float,
             dual_reltol: float, feas_tol: float, max_iter: int, check_every: int,
             adaptive_rho: bool, deadline: float | None, gap_tol: float | None = None,
             obj_tol: float | None = None,
             single: bool = False) -> tuple[np.ndarray, bool, int, list[dict]]:
    """Iterate to the stopping rule of the module docstring. In float32 with ``single`` False
    (mixed precision) the iterations move to float64 once the float32 violation is within
    SWITCH_FACTOR * feas_tol or stops improving. Returns (W, converged, iterations, history)."""
    has_bias = eng.B.shape[0] > d
    certify = gap_tol is not None and eng.support is None  # not for the refit's program
    history: list[dict] = []
    it, best, stale = 0, np.inf, 0
    l1_seen: list[tuple[int, float]] = []  # (iteration, l1 of the iterate) at the checks
    tried: tuple[float, float] | None = None  # (violation, l1 change) of the last restoration
    while it < max_iter:
        k = min(check_every, max_iter - it)
        eng.iterate(k, eps)
        it += k
        res = eng.residuals(abstol, reltol, dual_reltol)
        res.update(iter=it, dtype=np.dtype(eng.dtype).name)
        history.append(res)
        l1_now = res["l1"] = _l1_of_q(eng, d, thresh)
        settled = obj_tol is None or _settled(l1_seen, it, l1_now, obj_tol, tail=True)
        # the certificate's float64 product is taken only once the l1 has moved by at most
        # gap_tol over the window: while it still falls faster, a bound within gap_tol of it
        # is all but out of reach, and taking it at every check cost 6% of 784->300 at
        # P = 10000
        steady = certify and _settled(l1_seen, it, l1_now, gap_tol)
        l1_seen.append((it, l1_now))
        primal_ok = res["primal"] <= res["eps_primal"]
        boyd = primal_ok and res["dual"] <= res["eps_dual"] and settled
        mixed32 = eng.dtype != np.float64 and not single
        gap_check = steady and primal_ok
        if boyd or mixed32 or gap_check:
            W = eng.weights()
            W[:, :d][np.abs(W[:, :d]) <= thresh] = 0.0
            v = res["violation"] = eng.violation(W, eps)
        if boyd or gap_check:
            # the dual's bound does not depend on W: one product serves the raw and the
            # restored W (is the objective there? the restoration moves it by 1e-6 to 2e-5)
            bound = None if boyd else eng.dual_bound(eps, has_bias)
            if bound is not None:
                res["bound"] = bound
            if boyd and v > feas_tol and _restore_hopeless(tried, v):
                res["restore_skipped"] = True
            elif boyd or _certified_gap(W, bound, d) <= gap_tol:
                # the restoration may cost the l1 at most RESTORE_L1 (relative) on Boyd's
                # stop; the certified gap, when it decides, accounts for it by itself
                Wr, vr, feasible = _restored(eng, W, v, eps, d, feas_tol, res,
                                             None if not boyd else RESTORE_L1)
                if "restore_attempt" in res:
                    tried = (v, res["restore_attempt"]["l1_change"])
                if feasible and (boyd or _certified_gap(Wr, bound, d, res) <= gap_tol):
                    res["violation"], res["restored"] = vr, Wr is not W
                    return Wr, True, it, history
        if mixed32:  # hand over once float32 is close, or has stopped making progress
            stale = 0 if v < 0.9 * best else stale + 1
            best = min(best, v)
            if v <= SWITCH_FACTOR * feas_tol or stale >= SWITCH_STALE:
                eng.to_float64(refine=True)
        if deadline is not None and time.perf_counter() > deadline:
            break
        if adaptive_rho and res["primal"] > BALANCE_MU * res["dual"]:
            eng.rescale_rho(BALANCE_TAU)
        elif adaptive_rho and res["dual"] > BALANCE_MU * res["primal"]:
            eng.rescale_rho(1.0 / BALANCE_TAU)
    W = eng.weights()
    W[:, :d][np.abs(W[:, :d]) <= thresh] = 0.0
    if history:
        history[-1]["violation"] = eng.violation(W, eps)
    return W, False, it, history


@register("nettrim", "Net-Trim l1 program by ADMM with a shared Cholesky and Numba kernels",
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
    rho: float | None = None,
    rho_fit: float | None = None,
    alpha: float = 1.9,
    adaptive_rho: bool = False,
    abstol: float = 1e-7,
    reltol: float = 1e-3,
    dual_reltol: float | None = None,
    feas_tol: float = 1e-5,
    gap_tol: float | None = 1e-5,
    obj_tol: float | None = 2e-6,
    max_iter: int = 10000,
    check_every: int = 20,
    warm_start=None,
    precision: str = "mixed",
    time_limit: float | None = None,
    max_bisect: int = 30,
    refit: bool = False,
) -> LayerResult:
    """Prune a layer with the Net-Trim program by ADMM.

    Parameters
    ----------
    gain, target_sparsity, per_neuron, Y, V, eps, eps_min, omega_tol, zero_tol : as for
        ``nettrim-cvx``.
    rho, rho_fit : penalties on W and on Xa W^T; None picks them from the data (see above).
    alpha : over-relaxation in [1, 2) (1 is plain ADMM).
    adaptive_rho : Boyd's residual balancing (mu = 10, tau = 2), scaling both penalties.
    abstol, reltol : Boyd's absolute and relative tolerances on the primal residual.
    dual_reltol : relative tolerance on the dual residual (relative to ||rho L2||, see
        ``NetTrimADMM.residuals``); None: DUAL_RELTOL_RELU (3e-2) for the ReLU program,
        DUAL_RELTOL_LINEAR (1e-3) for the linear one. The ReLU program's objective settles
        long before its dual does: on the MNIST layers a dual residual of 3e-2 came with an l1
        gap of 2e-5 to 5e-5. The linear program's does not: 3e-2 stopped random linear layers
        8e-4 to 1.2e-3 above the optimum, 1e-3 within 2e-6 to 1.2e-5 (in 100-120 iterations
        instead of 60).
    feas_tol : the returned W must satisfy dist(Xa W^T, C) <= feas_tol * eps.
    gap_tol : a second way to stop (None: Boyd's only): once the primal residual is within its
        tolerance, the l1 has moved by at most gap_tol over the last 20 iterations and W is
        feasible to feas_tol, a duality gap certified by
        ``NetTrimADMM.dual_bound`` (l1(W) - bound) / l1(W) <= gap_tol. Boyd's dual residual
        can stall for thousands of iterations after the objective has settled (seen on
        LeNet's cascade layers 400->120 and 120->84); the certificate cannot be fooled: weak
        duality bounds the true gap by it.
    obj_tol : Boyd's stop also needs the iterate's l1 to have moved by at most obj_tol
        (relative) over the last 20 iterations (SETTLE_WINDOW; None: not asked), or, a fall
        still slowing, by at most 2 obj_tol with at most 5 obj_tol left by extrapolation
        (``_tail_small``); and a restored W to cost at most RESTORE_L1 = 2e-5 more l1 than
        the iterate. Once the
        restoration made the iterate's own feasibility unnecessary, Boyd's dual residual at
        3e-2 stopped small layers 1.5e-4 above the optimum; obj_tol 5e-6 / 2e-6 / 1e-6 stopped
        the MNIST layers (300->100 at P = 500 and 2000, 784->300 at 2000) 7e-5, 2.6e-5,
        1.7e-5 / 1.0e-5, 9.6e-6, 9.0e-6 / 6.6e-6, 7.2e-6, 5.0e-6 above the optimum. The
        extrapolated tail, RESTORE_L1 2e-5 (it was 1e-5) and the restoration's doubled work
        limit stopped 784->300 at P = 10000 after 320 iterations for 400, 2.5e-5 above the
        optimum for 1.5e-5; over ten MNIST layers and gains (P = 500-10000, gains 0.02-0.1)
        0-80 iterations earlier, at most 2.5e-5 above the optimum (restoration included)
        where the rule before stopped at most 1.7e-5 above it. The float32 iterate's
        violation (4-6e-5 of eps on that layer) had made restorations cost 1.1e-5 of l1,
        just over the old budget, for 60 iterations.
    max_iter : iteration cap per solve; without convergence the result says so.
    check_every : residuals are evaluated every this many iterations.
    warm_start : an (m, d) or augmented (m, d+1) starting W.
    precision : "mixed" (float32 iterations, float64 finish), "float32" or "float64".
    time_limit : seconds for the whole solve (bisection included); when it runs out the
        result has status "time_limit" and converged False.
    refit : then re-solve on the found support: minimise ||(Xa W^T - Y)_Omega||^2 keeping the
        constraints (the same ADMM with a fit prox and a support projection).

    Returns
    -------
    LayerResult; ``certificate`` holds converged, l1, gain, iterations, the violations (on
    Omega relative to eps, the max off Omega, and the distance to C relative to eps), the time
    spent in products, solves, kernels and the restoration, and the residual history (a check
    that tried the restoration has ``restore_attempt``, its violation and l1 change; the check
    that stopped has ``restored``, whether the W returned is the restored one; a check that
    skipped a restoration its predecessor showed too costly has ``restore_skipped``; a check
    that took the certificate has ``bound``, the dual's lower bound on the l1).
    """
    t0 = time.perf_counter()
    gain = _check_gain(gain)
    target = check_target_sparsity(target_sparsity, eps)
    check_positive("rho", rho, allow_none=True)
    check_positive("rho_fit", rho_fit, allow_none=True)
    for name, v in (("abstol", abstol), ("reltol", reltol), ("feas_tol", feas_tol)):
        check_positive(name, v)
    check_positive("dual_reltol", dual_reltol, allow_none=True)
    check_positive("gap_tol", gap_tol, allow_none=True)
    check_positive("obj_tol", obj_tol, allow_none=True)
    check_positive("max_iter", max_iter, integer=True)
    check_positive("check_every", check_every, integer=True)
    check_positive("time_limit", time_limit, allow_none=True)
    check_positive("max_bisect", max_bisect, integer=True)
    check_nonnegative("zero_tol", zero_tol)
    alpha = _check_alpha(alpha)
    if precision not in _PRECISIONS:
        raise InvalidInputError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    per_neuron, refit = check_bool("per_neuron", per_neuron), check_bool("refit", refit)
    adaptive_rho = check_bool("adaptive_rho", adaptive_rho)
    Xa = augmented_inputs(problem)
    d, m = problem.d, problem.m
    cols = live_columns(Xa, d)
    d_live = int(np.count_nonzero(cols < d))

    Xl = Xa[:, cols]  # a copy: the bias column is rescaled below
    # a bias far above the weights' scale (mean|b0| / mean|W0| beyond BIAS_RATIO) is brought
    # onto it by scaling the ones column: every coordinate of W weighs the same in
    # the iteration's penalty, and with pixels of 0-255 (weights of 1e-3, a bias of 0.5) it
    # stalled at an l1 3-11% above the optimum while Boyd's residuals said converged. The bias
    # is not in the l1, so the program is unchanged (b = b~ * col_scale). Below the ratio the
    # ones stay: the MNIST layers (ratios 0.67-0.92) took 420 iterations for 320 on 300->100
    # when scaled, and scaling them to the inputs' rms did no better. A small bias stays
    # too: scaled down, the bias direction all but left the iteration, which stopped 1e-3
    # above the optimum.
    col_scale = np.ones(len(cols))
    if problem.bias is not None:
        w, bb = float(np.mean(np.abs(problem.W0))), float(np.mean(np.abs(problem.bias)))
        if w > 0 and bb > BIAS_RATIO * w:
            col_scale[-1] = bb / w
            Xl[:, -1] *= col_scale[-1]

    def full(W_live: np.ndarray) -> np.ndarray:
        """An (m, p) W from the ADMM's live, rescaled columns (zero on the dropped ones)."""
        W = np.zeros((m, Xa.shape[1]))
        W[:, cols] = W_live * col_scale
        return W

    eps_min = check_eps_min(eps_min, m, per_neuron)
    t = targets_for(problem, Xa, gain, Y=Y, V=V, eps=eps, omega_tol=omega_tol,
                    per_neuron=per_neuron)
    if dual_reltol is None:
        dual_reltol = DUAL_RELTOL_LINEAR if t.omega is None else DUAL_RELTOL_RELU
    base_eps = np.asarray(t.eps, dtype=np.float64) / gain
    auto_rho, auto_fit = default_penalties(problem.W0, t)
    rho = auto_rho if rho is None else float(rho)
    rho_fit = auto_fit if rho_fit is None else float(rho_fit)
    eng = NetTrimADMM(Xl, t, d_live, rho=rho, rho_fit=rho_fit,
                      alpha=alpha, dtype=np.float64 if precision == "float64" else np.float32)
    if warm_start is not None:
        W0 = np.asarray(warm_start, dtype=np.float64)
        if W0.shape == (m, d) and problem.bias is not None:
            W0 = np.hstack([W0, problem.bias[:, None]])
        if W0.shape != problem.W0a.shape or not np.all(np.isfinite(W0)):
            raise InvalidInputError(f"warm_start must be finite with shape {problem.W0a.shape}, "
                                    f"got shape {W0.shape}")
        eng.warm_start(W0[:, cols] / col_scale)
    opts = dict(d=d_live, thresh=zero_tol * float(np.max(np.abs(problem.W0))), abstol=abstol,
                reltol=reltol, dual_reltol=dual_reltol, feas_tol=feas_tol, gap_tol=gap_tol,
                obj_tol=obj_tol,
                single=precision == "float32",
                max_iter=max_iter, check_every=check_every, adaptive_rho=adaptive_rho,
                deadline=None if time_limit is None else t0 + time_limit)

    # the sparsity search's solves: loose, in float32, capped (see bisect_gain)
    search_opts = {**opts, "single": True, "max_iter": min(max_iter, SEARCH_MAX_ITER),
                   **{k: None if opts[k] is None else max(v, opts[k])
                      for k, v in SEARCH_TOLERANCES.items()}}

    last: list = []  # the latest solve and its gain: what a search out of time returns

    def solve_at(g, search: bool = False):
        if last and opts["deadline"] is not None and time.perf_counter() > opts["deadline"]:
            raise _TimeUp  # no new solve once time_limit has run out
        e = radius_at(base_eps, g, eps_min) if eps is None else np.asarray(t.eps)
        if precision == "mixed":
            eng.to_float32()  # a new radius: the bulk of the work in float32 again
        W, conv, its, hist = run_admm(eng, e, **(search_opts if search else opts))
        W = full(W)
        if target is not None:
            steps.append({"gain": g, "iterations": its, "converged": conv})
        last[:] = [(W, conv, its, hist, e), g]
        return W, conv, its, hist, e

    def search_at(g):
        out = solve_at(g, search=True)
        # a capped search solve that did not converge is not to be trusted near the band: it
        # goes on to the accurate stop, warm. Far from it, its side of the target is all the
        # search needs (see SEARCH_TRUST)
        if out[1]:
            return out, False
        if abs(pruned_fraction(out[0], d) - target) > SEARCH_TRUST:
            return out, False, True  # tentative (see bisect_gain)
        its = steps[-1]["iterations"]
        out = solve_at(g)  # (out of time, it raises and the search's record stands)
        del steps[-2]
        steps[-1]["iterations"] += its
        return out, True

    steps: list[dict] = []  # per bisection step, merged into bisect_gain's records below

    bisect: list[dict] = []
    if target is None:
        W, conv, its, hist, e = solve_at(gain)
        total = its
    else:  # warm-started: the engine carries its state from one gain to the next
        try:
            (W, conv, its, hist, e), gain, bisect = bisect_gain(
                solve_at, gain, target, max_bisect, d,
                search_at=search_at,
                min_gain=floor_gain(base_eps, eps_min), top_gain=max_gain(t))
            for rec, step in zip(bisect, steps, strict=True):
                rec.update(step)
        except _TimeUp:  # the latest solve, unconverged: the result says time_limit
            (W, _, its, hist, e), gain = last
            conv, bisect = False, steps
        total = sum(s["iterations"] for s in bisect)
    t.eps = e
    mask = W[:, :d] != 0
    l1 = float(np.abs(W[:, :d]).sum())
    refit_info = None
    if refit:
        eng.start_refit(mask[:, cols[:d_live]])
        W, rconv, rits, rhist = run_admm(eng, e, **opts)
        W = full(W)
        hist = hist + rhist
        W[:, :d][~mask] = 0.0
        total += rits
        conv = conv and rconv
        refit_info = {"converged": rconv, "iterations": rits,
                      "violation_rel": rhist[-1].get("violation") if rhist else None}
    viol = relative_violation(Xa @ W.T, t, e)  # of the returned W, refit or not
    if refit_info is not None:
        refit_info["l1_program"] = l1  # the l1 optimum, before the refit moved the weights
    cert = {"converged": bool(conv), "l1": float(np.abs(W[:, :d]).sum()), "refit": refit_info,
            "gain": gain,
            "iterations": total, "violation_rel": viol, "rho": eng.rho,
            "rho_fit": eng.rho / eng.c**2, "time_breakdown": dict(eng.timing),
            "residuals": hist, "bisection": bisect, **certificate(Xa, W, t),
            "target_met": target_met(mask, target)}
    # the l1 path can jump over the +-1% band (several weights reach zero at one gain): the
    # closest solve is returned, and its status says the target was missed
    status = "solved" if cert["target_met"] in (None, True) else "target_missed"
    if not conv:
        out_of_time = time_limit is not None and time.perf_counter() - t0 >= time_limit
        status = "time_limit" if out_of_time else "max_iter"
    settings = {"program": "linear" if t.omega is None else "relu",
                "gain": gain, "target_sparsity": target, "per_neuron": per_neuron,
                "eps_min": np.asarray(eps_min).tolist(), "omega_tol": omega_tol,
                "zero_tol": zero_tol, "rho": rho, "rho_fit": rho_fit,
                "alpha": alpha, "adaptive_rho": adaptive_rho, "abstol": abstol,
                "reltol": reltol, "dual_reltol": dual_reltol, "feas_tol": feas_tol,
                "gap_tol": gap_tol, "obj_tol": obj_tol,
                "max_iter": max_iter, "precision": precision, "refit": refit}
    return finalize(problem, W, mask, solver="nettrim", settings=settings, t0=t0,
                    iterations=total, status=status,
                    history=hist, certificate=cert)
