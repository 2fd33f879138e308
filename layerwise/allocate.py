"""Per-layer sparsities from one global budget.

Uniform sparsity is a poor default: a 3x3 conv on one input channel has 9 weights per filter,
and uniform 90% leaves one. Two rules:

- ``global_allocation`` (in the spirit of OBC's SPDY, Frantar & Alistarh 2022): measure each
  layer's relative reconstruction error at a grid of sparsities with a cheap solver on its
  calibration Gram (the prune's own method where it is cheap, else sparsegpt:
  ``curve_method``), then choose one grid level per layer to minimise the summed error
  subject to the global count of pruned weights, by dynamic programming over the
  pruned-weight budget counted in whole weights up to MAX_BINS units (a level's count and the
  budget rounded half up, as the layer problems round them). Units of total / 2000 weights
  with levels rounded down (as before) passed over the best plan in 7 of 400 random odd-sized
  cases, by up to 21% more error, and rounding down to whole weights called reachable targets
  out of reach on small layers. Past MAX_BINS weights a unit is total / MAX_BINS weights, one
  in 20000 of the budget; 200 layers then take about 0.5 s.
- ``owl_allocation`` (Yin et al., ICML 2024, "Outlier Weighed Layerwise sparsity"): a layer's
  outlier ratio D_l is the fraction of its Wanda scores |W_ij| ||x_j|| above ``m`` times the
  layer mean; sparsities are target - 2 lam * (D_l - mean D) / (max D - min D), spanning
  2 lam as the authors' code's keep ratios do, so
  layers with more outliers are pruned less, then shifted so the weighted mean hits the target.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.problem import LayerProblem, round_half_up

MAX_BINS = 20000
# solvers cheap enough to draw their own error curves; any other method's curves are drawn
# by sparsegpt, a cheap stand-in for the error the compensating solvers reach
OWN_CURVES = ("magnitude", "wanda", "sparsegpt")
GRID = tuple(np.round(np.concatenate([np.arange(0.0, 0.9, 0.05), [0.9, 0.925, 0.95, 0.96,
                                                                   0.97, 0.98, 0.99]]), 4))


def allocation_grid(target: float) -> tuple[float, ...]:
    """GRID, and for a target above 0.99 finer levels between 0.99 and 1 around it (a layer
    count can then reach 0.995 or 0.999 overall; GRID's top of 0.99 refused them)."""
    if target <= 0.99:
        return GRID
    extra = {round(1 - (1 - target) * f, 6) for f in (4, 2, 1, 0.5, 0.25)}
    return tuple(sorted(set(GRID) | {v for v in extra if 0.99 < v < 1}))


def _check_target(target) -> float:
    ok = isinstance(target, (int, float, np.floating)) and not isinstance(target, bool)
    if not ok or not 0 <= target < 1:
        raise InvalidInputError(f"global sparsity must be in [0, 1), got {target!r}")
    return float(target)


def error_curves(layers: Sequence[tuple[np.ndarray, np.ndarray | None, Gram]], *,
                 grid: Sequence[float] = GRID, method: str = "sparsegpt") -> np.ndarray:
    """(L, len(grid)) relative errors of each (W, b, Gram) layer at each grid sparsity: each
    entry is ``solve_layer(W, gram=Gram, bias=b, sparsity=s, method=method).rel_error``, with
    the layer's problem built (validated, its Gram copied) once rather than per level, and
    sparsegpt's inverse Hessian factor shared by the levels (``sparsegpt.error_curve``)."""
    from layertrim.solvers import sparsegpt
    from layertrim.solvers.registry import _blas_threads, get_solver, run

    out = np.zeros((len(layers), len(grid)))
    for i, (W, b, g) in enumerate(layers):
        levels = []
        for k, s in enumerate(grid):
            # LayerProblem's count (round half up), not Python's round (half to even): at 0.99
            # of 50 weights (1 - s) * 50 is 0.5000000000000004, which round() takes for 1 kept
            if s > 0 and W.size - round_half_up(s * W.size) < 1:
                out[i, k] = np.inf  # the level would leave no weight: never chosen
            elif s > 0:
                levels.append(k)
        if not levels:
            continue
        problem = LayerProblem.create(W, gram=g, bias=b, sparsity=float(grid[levels[0]]),
                                      require_target=get_solver(method).needs_target)
        with _blas_threads(problem):  # as inside run: the same threads, the same bits
            if method == "sparsegpt":
                out[i, levels] = sparsegpt.error_curve(problem, [grid[k] for k in levels])
            else:
                out[i, levels] = [run(problem.with_sparsity(grid[k]), method).rel_error
                                  for k in levels]
    return out


def curve_method(method: str) -> str:
    """The solver that draws the error curves for a prune by ``method``: the method itself
    where it is cheap (OWN_CURVES), else sparsegpt. Drawing magnitude's plan from sparsegpt's
    curves undervalued magnitude's error where it grows fastest: at 95% of the MNIST MLP the
    plan pruned the 1010-weight output layer to 75% and the network fell to 38% accuracy
    (85% with magnitude's own curves)."""
    return method if method in OWN_CURVES else "sparsegpt"


def global_allocation(curves: np.ndarray, sizes: Sequence[int], target: float, *,
                      grid: Sequence[float] = GRID, bins: int | None = None) -> np.ndarray:
    """Per-layer sparsities (grid values) minimising sum of curves under the global budget:
    at least ``target`` of all weights pruned. The budget is counted in ``bins`` units (None:
    one weight each, at most MAX_BINS units)."""
    target = _check_target(target)
    sizes = np.asarray(sizes, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    L, K = curves.shape
    if len(sizes) != L or len(grid) != K:
        raise InvalidInputError("curves, sizes and grid do not match")
    if bins is None:
        bins = int(min(round(sizes.sum()), MAX_BINS))
    unit = sizes.sum() / bins
    # counts round half up, as the layer problems and exact_counts round them (rounding the
    # levels down made a reachable target unreachable on small layers: 0.985 of 101 + 103)
    need = round_half_up(target * sizes.sum() / unit)
    # cost[b] = least error with at least b budget units pruned so far (b capped at need)
    cost = np.full(need + 1, np.inf)
    cost[0] = 0.0
    choice = np.zeros((L, need + 1), dtype=np.int64)
    for i in range(L):
        new = np.full(need + 1, np.inf)
        units = np.array([round_half_up(v) for v in grid * sizes[i] / unit], dtype=np.int64)
        for k in range(K):
            u = int(units[k])
            cand = cost + curves[i, k]
            if u < need:  # b -> b + u below the cap: one-to-one
                b = np.arange(need - u)
                better = cand[b] < new[b + u]
                new[b[better] + u] = cand[b[better]]
                choice[i, b[better] + u] = k * (need + 1) + b[better]
            lo = max(0, need - u)  # every b from lo up lands on the cap ("at least need")
            bb = lo + int(np.argmin(cand[lo:]))
            if cand[bb] < new[need]:
                new[need] = cand[bb]
                choice[i, need] = k * (need + 1) + bb
        cost = new
    if not np.isfinite(cost[need]):
        raise InvalidInputError(f"global sparsity {target} is out of reach on this grid")
    picks = np.zeros(L, dtype=np.int64)
    b = need
    for i in range(L - 1, -1, -1):
        k, prev = divmod(int(choice[i, b]), need + 1)
        picks[i] = k
        b = prev
    return grid[picks]


def owl_allocation(scores: Sequence[np.ndarray], target: float, *, m: float = 5.0,
                   lam: float = 0.08, caps: Sequence[float] | None = None) -> np.ndarray:
    """OWL sparsities from each layer's Wanda score matrix, weighted mean = target. ``caps``
    are the layers' largest feasible sparsities (each group keeping a weight). Every layer is
    held at 0.99, or for a target above 0.99 at half the target's density (0.9975 for 0.995),
    and at its cap. A target that the caps put out of reach is refused."""
    target = _check_target(target)
    sizes = np.array([s.size for s in scores], dtype=np.float64)
    top = np.full(len(scores), 0.99 if target <= 0.99 else 1 - (1 - target) / 2)
    if caps is not None:
        top = np.minimum(top, np.asarray(caps, dtype=np.float64))
    D = np.array([float(np.mean(s > m * np.mean(s))) for s in scores])
    spread = D.max() - D.min()
    s = (np.full(len(scores), target) if spread == 0
         else target - 2 * lam * (D - D.mean()) / spread)
    # one shift c for all layers, found by bisection, so that the weighted mean of the clipped
    # sparsities clip(s + c, 0, top) is the target (shifting before clipping would miss it)
    def mean(c: float) -> float:
        return float(np.sum(np.clip(s + c, 0.0, top) * sizes) / sizes.sum())

    if mean(2.0 + 2 * lam) < target - 1e-9:
        raise InvalidInputError(f"global sparsity {target} is out of reach: the layers can "
                                f"prune at most {mean(2.0 + 2 * lam):.4f} of the weights")
    lo, hi = -1.0 - 2 * lam, 1.0 + 2 * lam
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(mid) < target else (lo, mid)
    return np.clip(s + hi, 0.0, top)


def exact_counts(sparsities: Sequence[float], group_sizes: Sequence[Sequence[int]],
                 target: float) -> list[list[int]]:
    """Kept weights per (layer, group) such that exactly round_half_up(target * total) weights
    are pruned (at most all but one weight of every group): each layer's pruned share
    sparsity * size is rounded by largest remainder across the layers, then split over its
    groups in proportion to their sizes the same way, every group keeping at least one
    weight. (Rounding every group's sparsity on its own missed the total by up to half a
    weight per group: 29 weights on a depthwise layer of 64 groups of 9.)"""
    sizes = np.array([sum(gs) for gs in group_sizes], dtype=np.int64)
    caps = np.array([sum(g - 1 for g in gs) for gs in group_sizes], dtype=np.int64)
    # every group keeps a weight: a count beyond that is held at it (the report then warns
    # that the layer is off its target), as rounding each group on its own used to do
    want = min(round_half_up(target * sizes.sum()), int(caps.sum()))
    pruned = _round_to_total(np.asarray(sparsities, dtype=np.float64) * sizes, caps, want)
    out = []
    for p, gs in zip(pruned, group_sizes, strict=True):
        g = np.asarray(gs, dtype=np.int64)
        share = p * g / g.sum()
        out.append([int(k) for k in g - _round_to_total(share, g - 1, int(p))])
    return out


def _round_to_total(x: np.ndarray, cap: np.ndarray, total: int) -> np.ndarray:
    """Integers within [0, cap] near x, summing to ``total`` (largest remainder first when
    rounding up, smallest first when rounding down)."""
    x = np.clip(x, 0, cap)
    out = np.floor(x).astype(np.int64)
    rest = x - out
    while out.sum() != total:
        up = out.sum() < total
        room = out < cap if up else out > 0
        if not room.any():
            raise InvalidInputError(f"cannot split {total} pruned weights within the layers")
        key = np.where(room, rest if up else -rest, -np.inf)
        order = np.argsort(-key, kind="stable")[: abs(total - int(out.sum()))]
        order = order[room[order]]
        out[order] += 1 if up else -1
        rest[order] = -1.0 if up else 2.0  # each adjusted once per pass
    return out


def trim_overshoot(s: np.ndarray, curves: np.ndarray, sizes: Sequence[int], target: float, *,
                   grid: Sequence[float] = GRID) -> np.ndarray:
    """Lower grid-level sparsities so that exactly ``target`` of all weights is pruned (to
    within one weight): the grid makes the dynamic program prune a little more than asked.
    Layers give back where the error curve is steepest per weight, never below their next
    lower grid level (linear interpolation of the curve in between)."""
    s = np.array(s, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    over = float(np.sum(s * sizes) - target * sizes.sum())
    floor = np.array([grid[max(int(np.searchsorted(grid, v - 1e-9)) - 1, 0)] for v in s])
    while over > 0.5:
        k = np.array([int(np.argmin(np.abs(grid - v))) for v in s])
        slope = np.full(len(s), -np.inf)
        room = (s - floor) * sizes
        for i in np.nonzero(room > 0.5)[0]:
            lo = max(k[i] - 1, 0)
            step = (grid[k[i]] - grid[lo]) * sizes[i]
            slope[i] = (curves[i, k[i]] - curves[i, lo]) / step if step > 0 else -np.inf
        if not np.isfinite(slope).any():
            break
        i = int(np.argmax(slope))
        give = min(over, room[i])
        s[i] -= give / sizes[i]
        over -= give
    return s
