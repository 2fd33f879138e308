"""Global neural pruning (Salama, Ostapenko, Klein, Nabi, "Pruning at a Glance: Global Neural
Pruning for Model Compression", 2019): one threshold on normalised neuron/filter norms across
all layers, set to hit a global parameter-count target. No per-layer sensitivity analysis.

A model is a chain of layers W_0, ..., W_L; layer l has n_l neurons (rows, or filters of a
conv weight (n_l, c, kh, kw)), and each of its inputs carries f_l weights per neuron (f_l = 1
for a Linear after a Linear, kh*kw for a conv, the spatial size for a Linear after a
flattened conv). The score of neuron j of layer l is ||W_l[j]||_2 normalised within its layer
(``normalize="l2"``: divided by the l2 norm of all the layer's scores; ``"max"``: by the
largest). Neurons of the last layer (the model's outputs) are never pruned.

The parameter count of a chain keeping k_l neurons per layer is
sum_l k_l (k_{l-1} f_l + [bias]) with k_{-1} the model's inputs and k_L = n_L; it grows as the
threshold falls, so the threshold is the lowest score (largest network) whose count does not
exceed the target: the result is at most the target and adding the next neuron would exceed
it, so it lies within one neuron's parameters (of one layer) of the target.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.common import finalize
from layertrim.solvers.coreset import column_keep, column_status
from layertrim.solvers.registry import register
from layertrim.solvers.structured import check_kept
from layertrim.validate import real_finite_array

NORMALIZE = ("l2", "max")


@dataclass
class GlobalThresholdResult:
    """kept[l]: sorted indices of layer l's kept neurons (the last layer keeps all);
    threshold: the global score threshold: a neuron is kept when its normalised score is at
    least this, and each layer also keeps its best neuron whatever its score (inf when only
    those are kept); params / target / total: parameter counts."""

    kept: list[np.ndarray]
    scores: list[np.ndarray]
    threshold: float
    params: int
    target: int
    total: int


def chain_factors(weights) -> tuple[list[np.ndarray], list[int]]:
    """Validated float64 weights and the per-input factor f_l of each layer (f_0 = 1)."""
    Ws = [real_finite_array(f"weights[{i}]", W, np.ndim(W)).astype(np.float64)
          for i, W in enumerate(weights)]
    if len(Ws) < 2:
        raise InvalidInputError("a chain needs at least two layers (the last is not pruned)")
    factors = [1]
    for i, W in enumerate(Ws):
        if W.ndim < 2 or W.size == 0:
            raise InvalidInputError(f"weights[{i}] must be a non-empty matrix or conv weight")
        if i == 0:
            continue
        n_prev, fan_in = Ws[i - 1].shape[0], W[0].size
        if W.ndim > 2 and W.shape[1] != n_prev:
            raise InvalidInputError(
                f"weights[{i}] is a convolution with {W.shape[1]} input channels per group after "
                f"a layer of {n_prev} neurons: a grouped or depthwise convolution ties its "
                f"channels to the previous layer's, which global neural pruning does not "
                f"handle (only dense chains)")
        if fan_in % n_prev:
            raise InvalidInputError(
                f"layer shapes do not chain: weights[{i}] has {fan_in} inputs per neuron, not a "
                f"multiple of the {n_prev} neurons of weights[{i - 1}]")
        factors.append(fan_in // n_prev)
    return Ws, factors


def chain_params(Ws, factors, counts, biases) -> int:
    """Weights (+ biases) of the chain keeping counts[l] neurons in layer l."""
    total, prev = 0, Ws[0][0].size
    for f, k, b in zip(factors, counts, biases, strict=True):
        total += int(k) * (int(prev) * f + (1 if b else 0))
        prev = k
    return total


def global_threshold(weights, *, target_params: int | None = None,
                     target_fraction: float | None = None, biases=None,
                     normalize: str = "l2") -> GlobalThresholdResult:
    """One global threshold on normalised neuron norms hitting a parameter-count target.

    Parameters
    ----------
    weights : list of layer weights in forward order, each (n_l, ...) with neurons first.
    target_params : parameters to keep (weights plus biases); or ``target_fraction`` of them.
    biases : list of bools (or arrays / None): which layers have a bias; default all.
    normalize : "l2" or "max": how a layer's scores are normalised.

    Returns
    -------
    GlobalThresholdResult
    """
    Ws, factors = chain_factors(weights)
    if normalize not in NORMALIZE:
        raise InvalidInputError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    has_b = [True] * len(Ws) if biases is None else [b is not None and b is not False
                                                     for b in biases]
    if len(has_b) != len(Ws):
        raise InvalidInputError(f"biases has {len(has_b)} entries for {len(Ws)} layers")
    full = [W.shape[0] for W in Ws]
    total = chain_params(Ws, factors, full, has_b)
    target = _target(target_params, target_fraction, total)
    scores = []
    for W in Ws[:-1]:
        s = np.linalg.norm(W.reshape(W.shape[0], -1), axis=1)
        z = np.linalg.norm(s) if normalize == "l2" else s.max()
        scores.append(s / z if z > 0 else np.ones_like(s))
    # every layer keeps its best neuron; the rest enter in one global order of score
    orders = [np.argsort(-s, kind="stable") for s in scores]
    rest = [(float(scores[li][j]), li) for li, o in enumerate(orders) for j in o[1:]]
    rest.sort(key=lambda x: -x[0])
    counts = np.ones(len(Ws), dtype=np.int64)
    counts[-1] = full[-1]
    if chain_params(Ws, factors, counts, has_b) > target:
        raise InvalidInputError(f"target of {target} parameters would keep 0 neurons in some "
                                f"layer: one neuron per layer already needs "
                                f"{chain_params(Ws, factors, counts, has_b)}")
    cum = np.zeros((len(rest) + 1, len(Ws)), dtype=np.int64)
    for r, (_, li) in enumerate(rest):
        cum[r + 1] = cum[r]
        cum[r + 1, li] += 1
    lo, hi = 0, len(rest)  # largest r with params(counts + cum[r]) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if chain_params(Ws, factors, counts + cum[mid], has_b) <= target:
            lo = mid
        else:
            hi = mid - 1
    final = counts + cum[lo]
    kept = [np.sort(orders[li][: final[li]]) for li in range(len(Ws) - 1)]
    kept.append(np.arange(full[-1]))
    # the cut: the lowest score admitted in the global order (each layer's best neuron is
    # kept whatever its score, so it does not set the threshold); inf when none was admitted
    thr = float(rest[lo - 1][0]) if lo > 0 else float("inf")
    return GlobalThresholdResult(kept=kept, scores=scores, threshold=thr,
                                 params=chain_params(Ws, factors, final, has_b),
                                 target=target, total=total)


def _target(target_params, target_fraction, total: int) -> int:
    if (target_params is None) == (target_fraction is None):
        raise InvalidInputError("give either target_params or target_fraction")
    if target_fraction is not None:
        f = target_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float, np.number)) or not 0 < f <= 1:
            raise InvalidInputError(f"target_fraction {f!r} is outside (0, 1]")
        return int(round(f * total))
    if isinstance(target_params, bool) or not isinstance(target_params, (int, np.integer)):
        raise InvalidInputError(f"target_params must be an integer, got {target_params!r}")
    if target_params < 1:
        raise InvalidInputError(f"target_params={target_params}: nothing would be kept")
    if target_params > total:
        raise InvalidInputError(f"target_params={target_params} exceeds the {total} "
                                f"parameters that exist")
    return int(target_params)


@register("global-threshold", "structured: keep the input neurons with the largest "
          "normalised column norms (Salama et al. 2019; one layer of global_threshold)")
def solve(problem: LayerProblem, *, normalize: str = "l2") -> LayerResult:
    """Single-layer view: the problem's d inputs are the neurons of the previous layer, scored
    by the norm of their column (their outgoing weights, since the previous layer is not part
    of a layer problem); round(nnz / m) columns are kept. With one layer the global threshold
    is this layer's threshold; ``global_threshold`` sets one across many layers."""
    t0 = time.perf_counter()
    if normalize not in NORMALIZE:
        raise InvalidInputError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    k = column_keep(problem)
    s = np.linalg.norm(problem.W0, axis=0)
    kept = np.sort(np.argsort(-s, kind="stable")[:k])
    mask = np.zeros(problem.W0.shape, dtype=bool)
    mask[:, kept] = True
    thr = float(s[kept].min() / (np.linalg.norm(s) if normalize == "l2" else s.max()))
    return finalize(problem, problem.W0a, mask, solver="global-threshold",
                    settings={"normalize": normalize, "kept": kept.tolist(), "threshold": thr,
                              "target_nnz": problem.nnz},
                    t0=t0, iterations=1, status=column_status(problem, k))


def shrink_chain(weights, biases, kept):
    """Smaller dense layers: layer l keeps rows kept[l] and, of its inputs, those of the
    previous layer's kept neurons (each input's f_l weights). Returns (weights, biases)."""
    Ws, factors = chain_factors(weights)
    if len(kept) != len(Ws):
        raise InvalidInputError(f"kept has {len(kept)} entries for {len(Ws)} layers")
    out_w, out_b = [], []
    prev = None
    for li, (W, f) in enumerate(zip(Ws, factors, strict=True)):
        rows = check_kept(kept[li], W.shape[0])
        Wk = W[rows]
        if prev is not None:
            flat = Wk.reshape(Wk.shape[0], -1)
            n_prev = Ws[li - 1].shape[0]
            if W.ndim == 2:  # a Linear: inputs are (channel, position) flattened channel-major
                cols = (prev[:, None] * f + np.arange(f)[None, :]).ravel()
                Wk = flat.reshape(Wk.shape[0], n_prev * f)[:, cols]
            else:  # a conv: (out, in, kh, kw)
                Wk = Wk[:, prev]
        out_w.append(Wk)
        b = None if biases is None else biases[li]
        out_b.append(None if b is None else np.asarray(b, dtype=np.float64)[rows])
        prev = rows
    return out_w, out_b
