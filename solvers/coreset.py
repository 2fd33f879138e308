"""Coreset neuron pruning: importance-sample the neurons of layer l by their sensitivity and
reweight their columns of W_{l+1}, so every next-layer pre-activation is approximated.

References: Mussay, Osadchy, Braverman, Zhou, Feldman, "Data-Independent Neural Pruning via
Coresets", ICLR 2020 (data-independent sensitivities, one coreset for all neurons of the next
layer); Baykal, Liebenwein, Gilitschenski, Feldman, Rus, "Data-Dependent Coresets for
Compressing Neural Networks", ICLR 2019, and "SiPP: Sensitivity-informed Provable Pruning"
(empirical sensitivities over a calibration batch, positive and negative weights apart).

Layer l has neurons j = 1..n with activations a_j(x) = relu(p_j . x + b_j) (p_j the j-th row
of W1); next-layer neuron i computes z_i(x) = sum_j w_ij a_j(x) + c_i (w = W2, c = b2).

Sensitivities
-------------
- data-independent: for ||x|| <= radius and a nondecreasing, nonnegative activation (ReLU),
  |w_ij a_j(x)| <= u_ij := |w_ij| relu(radius ||p_j|| + |b_j|). The sensitivity is
  s_j = max_i u_ij / sum_k u_ik (Mussay et al.'s bound on a neuron's share of the next layer's
  envelope, maximised over next-layer neurons so one coreset serves the whole layer).
- data-dependent (SiPP): with w+ = max(w, 0) and w- = max(-w, 0),
  s_j = max over calibration x, next-layer i and sign of w^sign_ij a_j(x) / sum_k w^sign_ik a_k(x).

Sampling and the bound
----------------------
p_j = s_j / t with t = sum_j s_j. Draw m neurons i.i.d. from p and give neuron j the column
weight count_j / (m p_j): E[count_j] = m p_j, so the reweighted pre-activation is unbiased.
(Asked for a neuron count instead, ``sample_neurons`` keeps exactly that many by systematic
sampling with inclusion probabilities proportional to s_j, weighted by 1 / pi_j.)
Every draw's term w_iJ a_J(x) / p_J is bounded by t S_i(x), S_i(x) = sum_k |w_ik| a_k(x) (or
the envelope sum_k u_ik), and its second moment by t S_i(x)^2, so Bernstein's inequality and a
union bound over the n2 next-layer neurons give, for one input x,

    P(max_i |z_i(x) - zhat_i(x)| > epsilon S_i(x)) <= delta  when
    m >= 2 t (1 + epsilon / 3) / epsilon^2 * ln(2 n2 / delta),

which is the m = O((t / epsilon^2) log(1 / delta)) of the papers with its constants spelled
out (``sample_size``). It holds for each fixed input: for the data-independent variant any one
input in the ball (a guarantee for all of them at once with one coreset needs the papers'
uniform-convergence term in m, not included here); for the data-dependent one each
calibration input and, as in Baykal et al., approximately new inputs from the same
distribution.
"""

from __future__ import annotations

import math
import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.problem import LayerProblem, round_half_up
from layertrim.result import LayerResult
from layertrim.solvers.common import check_damp, finalize
from layertrim.solvers.registry import register
from layertrim.solvers.structured import (
    StructuredResult,
    check_activations,
    check_eps_delta,
    check_keep,
    check_pair,
    pair_rel_error,
)
from layertrim.validate import check_bool, check_seed, real_finite_array

VARIANTS = ("data-independent", "data-dependent")
CHUNK_BYTES = 64 << 20  # the data-dependent sensitivity's temporary, per step


def _ratio_max(U: np.ndarray) -> np.ndarray:
    """max_i U_ij / sum_k U_ik over rows i with a positive sum (U >= 0, shape (n2, n))."""
    tot = U.sum(axis=1, keepdims=True)
    R = np.divide(U, tot, out=np.zeros_like(U), where=tot > 0)
    return R.max(axis=0)


def sensitivity_data_independent(W1, b1, W2, *, radius: float = 1.0) -> np.ndarray:
    """s_j = max_i u_ij / sum_k u_ik, u_ij = |W2_ij| relu(radius ||W1_j|| + |b1_j|)
    (Mussay et al. 2020; an upper bound of neuron j's share over the input ball)."""
    W1, b1, W2, _ = check_pair(W1, b1, W2)
    if isinstance(radius, bool) or not isinstance(radius, (int, float, np.number)) or not (
            0 < radius < np.inf):
        raise InvalidInputError(f"radius must be a number > 0, got {radius!r}")
    env = radius * np.linalg.norm(W1, axis=1) + (0.0 if b1 is None else np.abs(b1))
    return _ratio_max(np.abs(W2) * env[None, :])


def sensitivity_data_dependent(W2, A, *, chunk: int | None = None) -> np.ndarray:
    """SiPP empirical sensitivity, positive and negative weights apart:
    s_j = max_{x in A, i, sign} w^sign_ij a_j(x) / sum_k w^sign_ik a_k(x).

    Parameters
    ----------
    W2 : (n2, n) next-layer weights.
    A : (N, n) calibration activations of layer l (nonnegative after a ReLU; the absolute value
        is used otherwise).
    chunk : calibration rows per step; None sizes it so the (chunk, n2, n) temporary stays
        within CHUNK_BYTES.
    """
    W2 = np.asarray(W2, dtype=np.float64)
    A = np.abs(check_activations(A, W2.shape[1]))
    if chunk is None:
        chunk = max(1, CHUNK_BYTES // (8 * W2.size))
    s = np.zeros(W2.shape[1])
    for Wsign in (np.maximum(W2, 0.0), np.maximum(-W2, 0.0)):
        for c0 in range(0, A.shape[0], chunk):
            a = A[c0:c0 + chunk]  # (b, n)
            tot = a @ Wsign.T  # (b, n2)
            inv = np.divide(1.0, tot, out=np.zeros_like(tot), where=tot > 0)
            # max_i Wsign_ij / tot_xi, then times a_j(x): (b, n2, n) -> (b, n)
            best = (Wsign[None, :, :] * inv[:, :, None]).max(axis=1) * a
            np.maximum(s, best.max(axis=0), out=s)
    return s


def sample_size(t: float, epsilon: float, delta: float, n_out: int = 1) -> int:
    """m = ceil(2 t (1 + epsilon/3) / epsilon^2 * ln(2 n_out / delta)) (Bernstein + union bound
    over ``n_out`` next-layer neurons; see the module docstring)."""
    epsilon, delta = check_eps_delta(epsilon, delta)
    return max(1, math.ceil(2.0 * t * (1 + epsilon / 3) / epsilon**2
                            * math.log(2.0 * n_out / delta)))


def inclusion_probabilities(sens: np.ndarray, keep: int) -> np.ndarray:
    """pi_j = min(1, c s_j) with sum(pi) = keep (c found by capping the largest at 1 in turn);
    needs keep <= the number of positive sensitivities."""
    pi = np.zeros(sens.size)
    free = sens > 0
    left = float(keep)
    while True:
        c = left / float(sens[free].sum())
        over = free & (c * sens >= 1.0)
        if not over.any():
            pi[free] = c * sens[free]
            return pi
        pi[over] = 1.0
        free &= ~over
        left -= int(over.sum())
        if left <= 0 or not free.any():
            return pi


def sample_neurons(sens: np.ndarray, rng: np.random.Generator, *, m: int | None = None,
                   keep: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Sample neurons by sensitivity. Returns (kept, column weights, draws).

    With ``m``: m i.i.d. draws with p_j = s_j / sum(s), weights count_j / (m p_j) (the bound's
    sampling). With ``keep``: exactly ``keep`` distinct neurons by randomised systematic
    sampling (Madow 1949) with inclusion probabilities pi_j = min(1, c s_j) summing to keep,
    weights 1 / pi_j (Horvitz-Thompson): unbiased, in O(n). Drawing i.i.d. until ``keep``
    distinct neurons had been seen made the number of draws random, which biased the weights
    (E[weight] 0.86-1.31 where 1 is unbiased) and never ended when some neurons were nearly
    irrelevant."""
    n = sens.size
    t = float(sens.sum())
    if t <= 0:
        raise InvalidInputError("every sensitivity is zero: layer l+1 ignores layer l")
    if keep is None:
        p = sens / t
        draws = rng.choice(n, size=m, p=p)
        counts = np.bincount(draws, minlength=n)
        kept = np.flatnonzero(counts)
        return kept, counts[kept] / (int(m) * p[kept]), int(m)
    if keep >= int(np.count_nonzero(sens)):  # every neuron that matters: nothing to sample
        order = np.argsort(-sens, kind="stable")[:keep]
        return np.sort(order), np.ones(keep), keep
    pi = inclusion_probabilities(sens, keep)
    order = rng.permutation(n)  # a random order: systematic sampling is then unbiased for
    cum = np.cumsum(pi[order])  # every unit whatever the input order
    cum *= keep / cum[-1]
    cum[-1] = keep  # exactly keep in total, whatever the rounding
    points = rng.random() + np.arange(keep)
    last = int(np.flatnonzero(pi[order] > 0)[-1])  # a rounding overshoot lands on a real unit
    picked = order[np.minimum(np.searchsorted(cum, points, side="right"), last)]
    kept = np.sort(picked)
    return kept, 1.0 / pi[kept], keep


def coreset_prune(W1, b1, W2, b2=None, *, A=None, variant: str = "data-independent",
                  keep=None, epsilon: float | None = None, delta: float | None = None,
                  deterministic: bool = False, rescale: str = "auto", refit: bool = False,
                  radius: float = 1.0,
                  seed: int | None = 0, damp: float = 1e-8,
                  sensitivity=None) -> StructuredResult:
    """Prune the neurons of layer l (W1, b1) and rewire layer l+1 (W2, b2).

    A two-layer method, so it is a function of the pair rather than a ``solve(problem)``;
    the registry's ``coreset`` is its single-layer view (see ``solve``).

    Parameters
    ----------
    W1, b1 : (n, d), (n,) or None: layer l (ReLU).
    W2, b2 : (n2, n), (n2,) or None: layer l+1.
    A : (N, n) calibration activations of layer l; required by ``variant="data-dependent"``,
        by ``refit`` and for the reported ``rel_error``.
    variant : "data-independent" (weights and ``radius`` only) or "data-dependent" (SiPP).
    keep : neurons to keep, a count in [1, n] or a fraction in (0, 1]. Or give ``epsilon`` and
        ``delta``, and the number of draws comes from ``sample_size``.
    deterministic : keep the ``keep`` most sensitive neurons and rescale (see ``rescale``).
    rescale : for the deterministic variant: "row" multiplies row i of the kept W2 by the
        scalar c_i minimising ||Z_i - c_i Zk_i||^2 on the calibration pre-activations (Z_i
        of the dense pair, Zk_i of the kept neurons; needs A), "none" keeps the weights;
        "auto" is "row" when A is given. On the MNIST MLP the row rescale beat both no
        rescale and a uniform sensitivity-mass factor t / sum_kept s_j (bench/structured.py).
    refit : after choosing the neurons, refit W2 (and b2) on the kept columns by exact least
        squares on the Gram of [A, 1] (the engine's ``refit`` with a column-structured mask).
    radius : the input ball ||x|| <= radius of the data-independent bound.
    seed : for the sampling.
    damp : ridge of the refit, relative to mean(diag) of the Gram.
    sensitivity : (n,) precomputed sensitivities of this variant (from
        ``sensitivity_data_independent`` / ``sensitivity_data_dependent``), to draw many
        coresets of the same pair without recomputing them.

    Returns
    -------
    StructuredResult
    """
    t0 = time.perf_counter()
    W1, b1, W2, b2 = check_pair(W1, b1, W2, b2)
    n, n2 = W1.shape[0], W2.shape[0]
    if variant not in VARIANTS:
        raise InvalidInputError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if A is not None:
        A = check_activations(A, n)
    if (variant == "data-dependent" or refit) and A is None:
        raise InvalidInputError("the data-dependent variant and refit need the calibration "
                                "activations A of layer l")
    check_damp(damp)
    if (keep is None) == (epsilon is None and delta is None):
        raise InvalidInputError("give either keep (a neuron count) or epsilon and delta")
    if keep is None:
        if epsilon is None or delta is None:
            raise InvalidInputError("give both epsilon and delta")
        epsilon, delta = check_eps_delta(epsilon, delta)
        if deterministic:
            raise InvalidInputError("the deterministic variant needs keep, not epsilon/delta")
    else:
        keep = check_keep(keep, n)

    if sensitivity is not None:
        sens = real_finite_array("sensitivity", sensitivity, 1).astype(np.float64)
        if sens.shape != (n,) or np.any(sens < 0):
            raise InvalidInputError(f"sensitivity must be {n} nonnegative numbers")
    elif variant == "data-independent":
        sens = sensitivity_data_independent(W1, b1, W2, radius=radius)
    else:
        sens = sensitivity_data_dependent(W2, A)
    b2new = None if b2 is None else b2.copy()
    if deterministic:
        kept = np.sort(np.argsort(-sens, kind="stable")[:keep])
        scale, m = np.ones(kept.size), int(keep)
    else:
        rng = np.random.default_rng(seed)
        m_draws = None
        if keep is None:
            m_draws = sample_size(float(sens.sum()), epsilon, delta, n2)
        kept, scale, m = sample_neurons(sens, rng, m=m_draws, keep=keep)
    W2k = W2[:, kept] * scale
    if rescale not in ("auto", "row", "none"):
        raise InvalidInputError(f"rescale must be 'auto', 'row' or 'none', got {rescale!r}")
    if rescale == "row" and A is None:
        raise InvalidInputError("rescale='row' needs the calibration activations A")
    row_rescale = deterministic and (rescale == "row" or (rescale == "auto" and A is not None))
    if row_rescale:
        Z, Zk = A @ W2.T, A[:, kept] @ W2k.T
        den = np.einsum("ij,ij->j", Zk, Zk)
        c = np.divide(np.einsum("ij,ij->j", Z, Zk), den, out=np.ones_like(den), where=den > 0)
        W2k = W2k * c[:, None]
    method = f"coreset-{variant}" + ("-topk" if deterministic else "")
    if refit:
        W2k, b2new = _refit_columns(W2, b2, A, kept, damp)
        method += "+refit"
    rel = None
    if A is not None:
        full = np.zeros_like(W2)
        full[:, kept] = W2k
        rel = pair_rel_error(A, W2, b2, full, b2new)
    settings = {"variant": variant, "deterministic": deterministic, "refit": refit,
                "rescale": "row" if row_rescale else "none",
                "epsilon": epsilon, "delta": delta, "seed": seed, "radius": radius,
                "t": float(sens.sum()), "wall_time": time.perf_counter() - t0}
    return StructuredResult(kept=kept, scale=scale, W1=W1[kept],
                            b1=None if b1 is None else b1[kept], W2=W2k, b2=b2new,
                            sensitivity=sens, n_samples=int(m), method=method,
                            settings=settings, rel_error=rel)


def _refit_columns(W2, b2, A, kept, damp):
    """Least-squares W2 on the kept columns (and b2), from the Gram of [A, 1]."""
    from layertrim.solvers.refit import refit as refit_fn

    problem = LayerProblem.create(W2, gram=Gram.from_data(A), bias=b2,
                                  nnz=W2.shape[0] * kept.size)
    mask = np.zeros(W2.shape, dtype=bool)
    mask[:, kept] = True
    r = refit_fn(problem, mask, damp=damp)
    return r.W[:, kept], r.bias


def column_keep(problem: LayerProblem) -> int:
    """Input neurons (columns) a structured single-layer solver keeps for the problem's nnz
    target: nnz / m rounded half up (as the engine rounds counts), at least 1, at most d."""
    if problem.pattern.kind != "layer":
        raise InvalidInputError(f"structured solvers remove whole input columns: use "
                                f"pattern='layer', not {problem.pattern}")
    return int(min(problem.d, max(1, round_half_up(problem.nnz / problem.m))))


def column_status(problem: LayerProblem, k: int) -> str:
    """"solved" when k whole columns hold exactly the nnz asked, else "column_rounded" (as
    pivot says "block_rounded"): the count asked is not a multiple of the m rows."""
    return "solved" if k * problem.m == problem.nnz else "column_rounded"


@register("coreset", "structured: sample input neurons by sensitivity, reweight their columns "
          "(Mussay et al. 2020; Baykal et al. 2019)")
def solve(problem: LayerProblem, *, variant: str = "data-independent",
          deterministic: bool = False, seed: int | None = 0, refit: bool = False,
          damp: float = 1e-8) -> LayerResult:
    """Single-layer view of ``coreset_prune``: the problem's layer is layer l+1 and its d
    inputs are the neurons of layer l; whole columns are removed, round(nnz / m) kept.

    Layer l's weights are not part of a layer problem, so the data-independent bound of a
    neuron's activation, relu(radius ||p_j|| + |b_j|), is replaced by its calibration RMS
    sqrt(H_jj) (up to a common factor, which the sensitivity ratio ignores). The data-dependent
    variant needs the per-sample inputs X. ``refit`` refits on the kept columns. The kept
    indices are in ``settings["kept"]`` and ``certificate["scale"]``.
    """
    t0 = time.perf_counter()
    k = column_keep(problem)
    check_damp(damp)
    deterministic = check_bool("deterministic", deterministic)
    refit = check_bool("refit", refit)
    if not deterministic and seed is not None:  # None: fresh entropy, as numpy takes it
        seed = check_seed("seed", seed)
    W = problem.W0
    if variant == "data-dependent":
        if problem.X is None:
            raise InvalidInputError("coreset variant 'data-dependent' needs the inputs X")
        sens = sensitivity_data_dependent(W, problem.X)
    elif variant == "data-independent":
        rms = np.sqrt(np.maximum(np.diag(problem.H)[: problem.d], 0.0))
        sens = _ratio_max(np.abs(W) * rms[None, :])
    else:
        raise InvalidInputError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if sens.sum() <= 0:
        sens = np.ones(problem.d)
    if deterministic:
        kept, scale, m = np.sort(np.argsort(-sens, kind="stable")[:k]), np.ones(k), k
    else:
        kept, scale, m = sample_neurons(sens, np.random.default_rng(seed), keep=k)
    mask = np.zeros(W.shape, dtype=bool)
    mask[:, kept] = True
    Wa = problem.W0a.copy()
    Wa[:, kept] *= scale
    settings = {"variant": variant, "deterministic": deterministic, "seed": seed,
                "kept": kept.tolist(), "draws": int(m)}
    if refit:
        from layertrim.solvers.refit import refit as refit_fn

        r = refit_fn(problem, mask, damp=damp)
        Wa = r.W if r.bias is None else np.hstack([r.W, r.bias[:, None]])
        settings["refit"] = True
    settings["target_nnz"] = problem.nnz
    return finalize(problem, Wa, mask, solver="coreset" + ("+refit" if refit else ""),
                    settings=settings, t0=t0, iterations=int(m),
                    status=column_status(problem, k),
                    certificate={"scale": scale.tolist(), "sensitivity_sum": float(sens.sum())})
