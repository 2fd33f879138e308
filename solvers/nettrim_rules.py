"""Net-Trim's constraint data for one layer: the target outputs Y, the set Omega, the bound V
off Omega and the radius eps, under the parallel and the cascade schemes (Aghasi, Abdi,
Nguyen, Romberg, NeurIPS 2017; SIAM J. Math. Data Science 2020).

Rows are samples: Xa is n x p (a ones column last when the layer has a bias), W0a is m x p.
For a ReLU layer the program is

    minimize ||W||_1  s.t.  ||(Xa W^T - Y)_Omega||_F <= eps,  (Xa W^T)_{not Omega} <= V,

and for a linear layer ||Xa W^T - Z0||_F <= eps. Both rules below make W0 itself feasible, so
the program is never infeasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.solvers.common import check_positive
from layertrim.validate import real_finite_array

CASCADE_GAMMA = math.sqrt(1.1)  # the authors' inflation of the cascade radius


@dataclass
class NetTrimTargets:
    """Y (n x m); omega (n x m bool, None for a linear layer); V (n x m, the bound used off
    omega; None for a linear layer); eps (a float, or an (m,) array per neuron)."""

    Y: np.ndarray
    omega: np.ndarray | None
    V: np.ndarray | None
    eps: float | np.ndarray


def pruned_fraction(out, d: int) -> float:
    """The pruned fraction of the first d columns of W (``out`` is W or a tuple starting
    with W)."""
    W = out[0] if isinstance(out, tuple) else out
    return 1.0 - np.count_nonzero(W[:, :d]) / W[:, :d].size


GAIN_RANGE = (1e-6, 1.0)  # at gain 1 the ball holds W = 0 (Net-Trim's radius is gain ||Y||)
# with bounds V below 0 off Omega (the cascade rule's X_hat W0^T) W = 0 is not feasible at
# any gain, and sparser solutions lie past gain 1: the search may go this far (where the ball
# no longer binds)
MAX_GAIN_WITH_V = 1e3


def max_gain(t) -> float:
    """The top of the sparsity search's gain range for targets ``t``: 1, where W = 0 meets the
    constraints (V >= 0 off Omega), else MAX_GAIN_WITH_V (the search stopped at gain 1 and
    returned 47% sparsity for a 70% target that gain 2.5 reaches)."""
    if t.omega is None or t.V is None or not np.any(t.V[~t.omega] < 0):
        return GAIN_RANGE[1]
    return MAX_GAIN_WITH_V
_STEP_OUT = math.log(4.0)  # factor of the gain's steps until the target is bracketed


def violation_scale(t: NetTrimTargets, eps) -> np.ndarray:
    """What a violation is measured against: eps, and where eps is 0 (an exact fit, which the
    cascade rule gives a neuron whose inputs pruning left unchanged) the norm of the fit's
    target Y on Omega (per neuron when eps is an array); relative to 0 a solution that matched
    the reference read 1e+297. The target is looked at only when some radius is 0."""
    eps = np.asarray(eps, dtype=np.float64)
    if np.all(eps > 0):
        return eps
    target = t.Y if t.omega is None else np.where(t.omega, t.Y, 0.0)
    norms = np.sqrt(np.sum(target**2, axis=0 if eps.ndim == 1 else None))
    return np.where(eps > 0, eps, norms)


def target_met(mask: np.ndarray, target: float | None) -> bool | None:
    """Whether the kept fraction of ``mask`` is within +-1% (or one weight) of the sparsity
    ``target``; None without a target."""
    if target is None:
        return None
    return bool(within(1.0 - np.count_nonzero(mask) / mask.size, target,
                       max(0.01, 1 / mask.size)))  # a Python bool: `is False` and JSON hold


def within(sparsity: float, target: float, tol: float = 0.01) -> bool:
    """|sparsity - target| <= tol, with room for rounding: 1 - 0.99 is 0.0100000000000000089."""
    return abs(sparsity - target) <= tol + 1e-12


def bisect_gain(solve_at, gain: float, target: float, max_bisect: int, d: int, *,
                search_at=None, tol: float = 0.01, min_gain: float = GAIN_RANGE[0],
                top_gain: float = GAIN_RANGE[1]):
    """Find a gain whose solution prunes within ``tol`` of ``target`` (the pruned fraction
    grows with the gain). ``solve_at(g)`` returns W or a tuple starting with W; its results
    warm-start each other where the solver allows.

    The search works on log(gain): steps of x4 until the target is bracketed, then regula
    falsi with the Illinois rule (a secant kept inside the bracket; the end kept twice in a
    row has its residual halved, so the bracket shrinks from both sides). The pruned fraction
    is nearly linear in log(gain) over a bracket, so this takes a few steps where halving the
    interval takes ten or more. With ``search_at`` (a cheap, loosely converged solve returning
    ``(output, accurate)``; it may fall back to an accurate solve when the cheap one is not
    to be trusted) the search runs on it to within tol / 2 and ``solve_at`` confirms the
    answer; when the accurate solve misses the band the search goes on with accurate solves.
    ``search_at`` may return ``(output, False, True)`` for a *tentative* point (a capped solve
    that did not converge, trusted for its side of the target only): a tentative end of the
    bracket that the other end moves towards twice in a row is solved accurately, and once
    such a recheck finds a tentative point on the wrong side, every later tentative point is
    solved accurately at once.
    A point that contradicts the bracket (the fraction is not monotone in noisy solves)
    replaces the end it contradicts. Below ``min_gain`` the radius no longer changes (a
    cascade floor, ``radius_at``); a bracket narrower than 1e-6 in log(gain) means the
    fraction jumps over the band, and the search stops there. The gain stays within
    [GAIN_RANGE[0], ``top_gain``] (``max_gain``). When the steps run out during
    the cheap search, one accurate solve at the last gain ends it.

    Returns (the accurate output closest to the target, its gain, [{"gain", "sparsity",
    "accurate"} per step])."""
    lo_x = math.log(min(max(min_gain, GAIN_RANGE[0]), top_gain))
    hi_x = math.log(top_gain)
    x = min(max(math.log(gain), lo_x), hi_x)
    # (log gain, pruned fraction - target, accurate, tentative) on either side
    below = above = None
    kept = 0  # +1 / -1: the side replaced at the last step (the Illinois rule)
    stuck, stuck_x = 0, None  # steps in a row the tentative end at stuck_x was kept
    recheck = False  # the next step solves a tentative point accurately
    recheck_side = 0  # the side (+1 / -1) the tentative point being rechecked read
    distrust = False  # a tentative point was on the wrong side: recheck every later one
    accurate, confirming = search_at is None, False
    steps: list[dict] = []
    out, g_out = None, math.exp(x)
    best = None  # (|miss|, output, gain) of the accurate solve closest to the target
    for _ in range(max_bisect):
        g_out = math.exp(x)
        was_accurate, tentative = accurate or recheck, False
        if was_accurate:
            out = solve_at(g_out)
        else:
            res = search_at(g_out)
            out, was_accurate = res[0], res[1]
            tentative = len(res) > 2 and bool(res[2])
        recheck = False
        f = pruned_fraction(out, d) - target
        steps.append({"gain": g_out, "sparsity": f + target, "accurate": was_accurate})
        if recheck_side and (f < 0) != (recheck_side < 0):
            distrust = True
        recheck_side = 0
        if tentative and distrust:  # tentative points have misled this search once
            recheck, recheck_side = True, -1 if f < 0 else 1
            continue
        if was_accurate and (best is None or abs(f) <= best[0]):
            best = (abs(f), out, g_out)
        if within(f + target, target, tol if was_accurate else tol / 2):
            if was_accurate:
                break
            accurate = confirming = True  # confirm at the same gain
            continue
        if confirming:  # a missed confirmation: the cheap solves misled, the search goes on
            confirming = False  # with accurate solves and their points only
            below = below if below is not None and below[2] else None
            above = above if above is not None and above[2] else None
        if f < 0:
            below = (x, f, was_accurate, tentative)
            if above is not None and above[0] <= x:
                above = None
            elif kept == -1 and above is not None:
                above = (above[0], above[1] / 2, *above[2:])
            kept = -1
        else:
            above = (x, f, was_accurate, tentative)
            if below is not None and below[0] >= x:
                below = None
            elif kept == 1 and below is not None:
                below = (below[0], below[1] / 2, *below[2:])
            kept = 1
        # a tentative end (a search solve that did not converge, trusted for its side only)
        # that the other end keeps moving towards may lie on the wrong side, where nothing
        # inside the bracket can contradict it: after two such steps it is solved accurately
        end = above if kept == -1 else below
        if end is not None and end[3]:
            stuck, stuck_x = (stuck + 1 if end[0] == stuck_x else 1), end[0]
        else:
            stuck, stuck_x = 0, None
        if stuck >= 2:
            stuck, stuck_x, recheck, x = 0, None, True, end[0]
            recheck_side = -1 if end[1] < 0 else 1
            continue
        if above is None:
            x_new = min(x + _STEP_OUT, hi_x)
        elif below is None:
            x_new = max(x - _STEP_OUT, lo_x)
        elif above[0] - below[0] < 1e-6:
            x_new = x  # the fraction jumps over the band between two gains
        else:
            (xb, fb, *_), (xa, fa, *_) = below, above
            x_new = xb + (xa - xb) * (-fb) / (fa - fb)
            x_new = min(max(x_new, xb + 0.02 * (xa - xb)), xa - 0.02 * (xa - xb))
        if x_new == x:  # the end of the gain's range, or a jump: the band is out of reach
            if not was_accurate:  # say so with an accurate solve; if that misses the band,
                accurate = confirming = True  # the search resumes on accurate points only
                continue
            break
        x = x_new
    if best is None:  # the steps ran out in the cheap search: never return a loose solve
        out = solve_at(g_out)
        steps.append({"gain": g_out, "sparsity": pruned_fraction(out, d), "accurate": True})
        return out, g_out, steps
    return best[1], best[2], steps  # the band may lie in a jump: the closest accurate solve


def radius_at(base_eps, gain: float, eps_min: float) -> np.ndarray:
    """The radius at ``gain``: gain * base_eps, but never below ``eps_min`` (the cascade
    rule's radius, which keeps W0 feasible when a sparsity target drives the gain)."""
    return np.maximum(np.asarray(base_eps, dtype=np.float64) * gain, eps_min)


def check_radius(name: str, value, m: int) -> float | np.ndarray:
    """eps or eps_min: one finite number >= 0 for the whole layer, or m of them (per neuron)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = np.array([np.nan])
        if arr.shape != (m,) or not np.all(np.isfinite(arr)) or np.any(arr < 0):
            raise InvalidInputError(f"{name} must be a finite number >= 0 or {m} of them (one "
                                    f"per neuron), got an array of shape {arr.shape}"
                                    + ("" if arr.shape != (m,) else " with a negative or "
                                       "non-finite entry"))
        return arr
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
            or not np.isfinite(value) or value < 0):
        raise InvalidInputError(f"{name} must be a finite number >= 0 (or {m} of them, one per "
                                f"neuron), got {value!r}")
    return float(value)


def check_eps_min(eps_min, m: int, per_neuron_eps: bool) -> float | np.ndarray:
    """A floor per neuron only under per-neuron radii (else it would make them per neuron)."""
    out = check_radius("eps_min", eps_min, m)
    if np.ndim(out) == 1 and not per_neuron_eps:
        raise InvalidInputError("eps_min has one floor per neuron but the radius is one for the "
                                "whole layer: pass per_neuron=True, or a single eps_min")
    return out


def floor_gain(base_eps, eps_min) -> float:
    """The gain below which every radius sits on its floor eps_min (the bisection need not
    search lower); 0 when some radius has no floor."""
    base = np.atleast_1d(np.asarray(base_eps, dtype=np.float64))
    floor = np.broadcast_to(np.asarray(eps_min, dtype=np.float64), base.shape)
    if not np.all(floor > 0):
        return 0.0
    ratios = np.where(base > 0, floor / np.where(base > 0, base, 1.0), np.inf)
    return float(np.min(ratios)) if np.isfinite(np.min(ratios)) else 0.0


def _check_gain(gain) -> float:
    check_positive("gain", gain)
    return float(gain)


def _radius(R: np.ndarray, gain: float, per_neuron: bool) -> float | np.ndarray:
    if per_neuron:
        return gain * np.linalg.norm(R, axis=0)
    return gain * float(np.linalg.norm(R))


def parallel_rule(Xa: np.ndarray, W0a: np.ndarray, relu: bool, gain: float, *,
                  omega_tol: float = 0.0, per_neuron: bool = False) -> NetTrimTargets:
    """Every layer sees the original network's input and output.

    ReLU: Y = relu(Xa W0a^T), Omega = {Y > omega_tol}, V = omega_tol off Omega (0 by default,
    the paper's V = 0; with a positive tolerance W0's small positive outputs stay feasible),
    eps = gain ||Y_Omega||_F (or gain ||Y_Omega,j|| per neuron j). Linear: Z0 = Xa W0a^T and
    eps = gain ||Z0||_F.
    """
    gain = _check_gain(gain)
    Z0 = Xa @ W0a.T
    if not relu:
        return NetTrimTargets(Z0, None, None, _radius(Z0, gain, per_neuron))
    Y = np.maximum(Z0, 0.0)
    omega = Y > omega_tol
    if not omega.any():
        raise InvalidInputError("Y has no positive entry: this ReLU layer is off on every sample")
    V = np.full(Y.shape, float(omega_tol))
    return NetTrimTargets(Y, omega, V, _radius(np.where(omega, Y, 0.0), gain, per_neuron))


def cascade_rule(Xa_hat: np.ndarray, W0a: np.ndarray, Y, relu: bool, *,
                 gamma: float = CASCADE_GAMMA, omega_tol: float = 0.0,
                 per_neuron: bool = False) -> NetTrimTargets:
    """Layer l sees the pruned network's input X_hat but must match the original output Y.

    ReLU (hidden layer): Omega = {Y > omega_tol}, V = X_hat W0^T off Omega and
    eps = gamma ||(X_hat W0^T - Y)_Omega||_F. Linear (last layer, Y = Z0 the original logits):
    eps = gamma ||X_hat W0^T - Z0||_F. The first layer has X_hat = X: use ``parallel_rule``.
    ``per_neuron``: the same rule neuron by neuron (column norms), so W0 stays feasible.
    """
    Y = real_finite_array("Y", Y, 2).astype(np.float64)
    if Y.shape != (Xa_hat.shape[0], W0a.shape[0]):
        raise InvalidInputError(f"shape mismatch: Y has shape {Y.shape}, expected "
                                f"(n, m) = ({Xa_hat.shape[0]}, {W0a.shape[0]})")
    Z_hat = Xa_hat @ W0a.T
    if not relu:
        return NetTrimTargets(Y, None, None, _radius(Z_hat - Y, gamma, per_neuron))
    omega = Y > omega_tol
    if not omega.any():
        raise InvalidInputError("Y has no positive entry: this ReLU layer is off on every sample")
    return NetTrimTargets(Y, omega, Z_hat,
                          _radius(np.where(omega, Z_hat - Y, 0.0), gamma, per_neuron))
