"""l0-constrained pruning of a layer with a general activation (Phan, Nguyen, Nguyen and
Kalagnanam, "Pruning deep neural networks with l0-constrained optimization", ICDM 2020).

Model. With calibration inputs X (n x d) and the original layer's outputs Y = sigma(X W0^T + b0),

    minimize  L(W, b) = || sigma(X W^T + b) - Y ||_F^2   subject to  W in S,

where S is the set of matrices with the problem's sparsity pattern and count (layer, row or
N:M). The bias is a free variable and is never pruned. For ``sigma = linear`` this is the
least-squares problem of the other solvers; for a nonlinear sigma it matches what the layer
actually emits, so saturated or switched-off units do not have to be reproduced exactly.

Method. Projected gradient (iterative hard thresholding) with a backtracking line search.
With Z = X W^T + b and R = sigma(Z) - Y the gradient is G = 2 (R * sigma'(Z))^T X (and the
column sums of 2 R * sigma'(Z) for b). A step of length t proposes

    W+ = P_S(W - t G),   b+ = b - t g_b,

P_S keeping the entries of largest magnitude that the pattern allows. W+ is accepted when

    L(W+, b+) <= L(W, b) + <G, W+ - W> + <g_b, b+ - b> + ||(W+, b+) - (W, b)||^2 / (2 t),

otherwise t is halved; after an acceptance t grows by a small factor so it can recover from
an early cautious step. The rule makes every accepted step decrease L (the quadratic model's
minimiser over S is no worse than the current point, which lies in S). Iterations stop when the
relative decrease of L falls below ``tol``, or after ``max_iter`` or ``time_budget`` seconds.
The start is the linear least-squares solution (another registered solver with the exact
refit). With ``refit`` the final support is then fixed and L is minimised over its entries and
the bias by L-BFGS to a stationary point: the exact refit of the nonlinear model.
"""

from __future__ import annotations

import time

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.solvers.activations import ArrayFn, checked_call, resolve_activation
from layertrim.solvers.common import finalize
from layertrim.solvers.masks import is_valid_mask, project_mask
from layertrim.solvers.registry import register, run

_GROW = 1.25  # step growth after an accepted step
_MAX_HALVINGS = 60  # 2^-60: the step is then far below any useful scale


class _Model:
    """L(W, b) and its gradient for fixed data; counts loss evaluations for the settings."""

    def __init__(self, X: np.ndarray, Y: np.ndarray, sigma: ArrayFn, dsigma: ArrayFn):
        self.X, self.Y, self.sigma, self.dsigma = X, Y, sigma, dsigma
        self.evals = 0

    def loss(self, W: np.ndarray, b: np.ndarray | None) -> tuple[float, tuple]:
        """Loss and the state (Z, R) that :meth:`grad` reuses instead of recomputing."""
        Z = self.X @ W.T
        if b is not None:
            Z += b
        R = checked_call(self.sigma, Z, "the activation") - self.Y
        self.evals += 1
        return float(np.einsum("ij,ij->", R, R)), (Z, R)

    def grad(self, state: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Gradients (dL/dW, dL/db) at the state returned by :meth:`loss`."""
        Z, R = state
        D = 2.0 * R * checked_call(self.dsigma, Z, "the activation's derivative")
        return D.T @ self.X, D.sum(axis=0)


def loss_and_grad(
    X: np.ndarray,
    Y: np.ndarray,
    W: np.ndarray,
    b: np.ndarray | None,
    activation="linear",
) -> tuple[float, np.ndarray, np.ndarray | None]:
    """L(W, b) = ||sigma(X W^T + b) - Y||_F^2 with its gradients (for checks and callers).

    Parameters
    ----------
    X : (n, d) inputs; Y : (n, m) targets; W : (m, d); b : (m,) or None.
    activation : a name or a pair (sigma, dsigma), as in :func:`resolve_activation`.

    Returns
    -------
    loss, dL/dW (m, d), dL/db (m,) or None when b is None.
    """
    _, sigma, dsigma = resolve_activation(activation, "linear")
    model = _Model(np.asarray(X, float), np.asarray(Y, float), sigma, dsigma)
    loss, state = model.loss(np.asarray(W, float), None if b is None else np.asarray(b, float))
    GW, gb = model.grad(state)
    return loss, GW, None if b is None else gb


def _start_point(problem: LayerProblem, init):
    """Initial (W, b, mask, label) from a solver name, a LayerResult or an explicit weight array."""
    d = problem.d
    b = None if problem.bias is None else problem.bias.copy()
    if isinstance(init, str):
        if init == "l0-general":
            raise InvalidInputError("init='l0-general' would start the solver from itself")
        # the linear least-squares optimum on the init solver's mask (refit passes through to
        # solvers that refit by themselves and follows the others by the exact refit)
        res = run(problem, init, refit=True)
        W, label = res.W, init
        if b is not None and res.bias is not None:
            b = np.asarray(res.bias, dtype=np.float64).copy()
    elif isinstance(init, LayerResult):
        W, label = init.W, f"given:{init.solver}"
        if b is not None and init.bias is not None:
            b = np.asarray(init.bias, dtype=np.float64).copy()
    else:
        try:
            W = np.asarray(init, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"init must be a solver name, a LayerResult or a weight array, got {init!r}"
            ) from None
        label = "array"
        if b is not None and W.shape == (problem.m, d + 1):
            W, b = W[:, :d], W[:, d].copy()
    if W.shape != (problem.m, d):
        raise InvalidInputError(f"init weights have shape {W.shape}, expected {(problem.m, d)}")
    if not np.all(np.isfinite(W)) or (b is not None and not np.all(np.isfinite(b))):
        raise InvalidInputError("init weights contain NaN or inf")
    # a dense or differently patterned start is moved into S before the first step
    mask = project_mask(np.abs(W), problem.pattern, problem.nnz)
    return np.where(mask, W, 0.0), b, mask, label


def _check_options(max_iter, tol, time_budget, refit, refit_max_iter) -> None:
    for name, v in (("max_iter", max_iter), ("refit_max_iter", refit_max_iter)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise InvalidInputError(f"{name} must be an integer >= 0, got {v!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.number)) or not 0 <= tol < 1:
        raise InvalidInputError(f"tol must be a number in [0, 1), got {tol!r}")
    if time_budget is not None and (
        isinstance(time_budget, bool)
        or not isinstance(time_budget, (int, float, np.number))
        or not time_budget > 0
    ):
        raise InvalidInputError(
            f"time_budget must be a positive number of seconds or None, got {time_budget!r}"
        )
    if not isinstance(refit, (bool, np.bool_)):
        raise InvalidInputError(f"refit must be True or False, got {refit!r}")


def _initial_step(Xa_gram: np.ndarray) -> float:
    """1 / (2 lambda_max(H)): the exact inverse Lipschitz constant for the linear model.

    A few power iterations are enough; the line search corrects the estimate either way.
    """
    v = np.ones(Xa_gram.shape[0]) / np.sqrt(Xa_gram.shape[0])
    lam = 0.0
    for _ in range(30):
        w = Xa_gram @ v
        lam = float(np.linalg.norm(w))
        if lam == 0.0:
            return 1.0
        v = w / lam
    return 1.0 / (2.0 * lam)


def _lbfgs(fg, x: np.ndarray, max_iter: int, deadline: float | None, memory: int = 10):
    """Minimise a smooth f by L-BFGS (two-loop recursion) with an Armijo backtracking search.

    ``fg(x) -> (f, g)``. Stops when no step along the search direction lowers f any more
    (the loss is then stationary to its floating-point resolution), after ``max_iter`` steps
    or at ``deadline``. Written out because it costs O(len(x) * memory) per step: SciPy's
    L-BFGS-B (1.17) spent ~50 ms per step on 65k variables, more than the loss itself.
    """
    f, g = fg(x)
    pairs: list[tuple[np.ndarray, np.ndarray, float]] = []
    it = 0
    while it < max_iter and not (deadline is not None and time.perf_counter() > deadline):
        q = -g
        alphas = []
        for s, y, rho in reversed(pairs):
            a = rho * (s @ q)
            q = q - a * y
            alphas.append(a)
        if pairs:  # the usual initial Hessian scaling s'y / y'y
            s, y, _ = pairs[-1]
            q = q * ((s @ y) / (y @ y))
        for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
            q = q + (a - rho * (y @ q)) * s
        slope = float(g @ q)
        if not slope < 0:  # lost descent (round-off): restart from steepest descent
            pairs.clear()
            q, slope = -g, -float(g @ g)
        if slope == 0.0:
            break
        step = 1.0
        for _ in range(50):
            x_new = x + step * q
            f_new, g_new = fg(x_new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        if not f_new < f:  # only round-off is left to gain
            break
        s, y = x_new - x, g_new - g
        sy = float(s @ y)
        if sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):  # keep the model convex
            pairs = [*pairs[-(memory - 1) :], (s, y, 1.0 / sy)]
        x, f, g = x_new, f_new, g_new
        it += 1
    return x, it


def _refit_support(model: _Model, W, b, mask, max_iter: int, deadline: float | None):
    """Minimise L over the kept entries of W and all of b jointly (the rows are independent,
    so the joint problem is their sum) by L-BFGS.

    Variables are scaled by the input norms sqrt(H_jj): unequal feature scales would otherwise
    make the problem badly conditioned for a quasi-Newton method that starts from the identity.
    """
    X = model.X
    col = np.sqrt(np.einsum("ij,ij->j", X, X))
    col[col == 0] = 1.0
    s = col[np.nonzero(mask)[1]]
    if b is not None:
        s = np.concatenate([s, np.full(b.shape, np.sqrt(X.shape[0]))])
    k = int(mask.sum())

    def unpack(u):
        x = u / s
        Wk = np.zeros_like(W)
        Wk[mask] = x[:k]
        return Wk, (x[k:] if b is not None else None)

    def fg(u):
        f, state = model.loss(*unpack(u))
        GW, gb = model.grad(state)
        g = GW[mask] if b is None else np.concatenate([GW[mask], gb])
        return f, g / s

    x0 = W[mask] if b is None else np.concatenate([W[mask], b])
    u, iters = _lbfgs(fg, x0 * s, max_iter, deadline)
    Wr, br = unpack(u)
    return Wr, br, iters


@register(
    "l0-general",
    "IHT with line search on ||sigma(XW^T+b) - Y||^2, any activation (Phan et al. 2020)",
    whole_model=False,  # needs the layer's samples and its activation: solve_layer only
)
def solve(
    problem: LayerProblem,
    *,
    activation=None,
    init="l0-admm",
    max_iter: int = 200,
    tol: float = 1e-6,
    time_budget: float | None = None,
    refit: bool = True,
    refit_max_iter: int = 500,
) -> LayerResult:
    """Prune a layer by fitting its nonlinear outputs sigma(X W^T + b) under the pattern.

    Parameters
    ----------
    activation : None (the problem's activation), a name ("linear", "relu", "leaky_relu",
        "tanh", "sigmoid", "gelu") or a pair (sigma, dsigma) of elementwise callables.
    init : the start: a registered solver name (run with the exact least-squares refit), a
        :class:`LayerResult`, or an (m, d) weight array ((m, d+1) [W, b] with a bias). A start
        off the pattern is projected onto it by magnitude.
    max_iter : projected-gradient iterations.
    tol : stop when an iteration lowers L by less than ``tol`` times its value.
    time_budget : seconds for the whole solve (init excluded), or None.
    refit : minimise L on the final support (weights and bias) to stationarity.
    refit_max_iter : L-BFGS iterations of the refit.

    Returns
    -------
    LayerResult whose ``objective``/``rel_error`` are the linear (H-based) error, as for every
    solver; the nonlinear loss and the stationarity measure are in ``certificate``.
    """
    t0 = time.perf_counter()
    if problem.X is None:
        raise InvalidInputError(
            "l0-general needs the per-sample inputs X (a Gram matrix alone is not enough to "
            "evaluate a nonlinear activation): build the problem with X"
        )
    _check_options(max_iter, tol, time_budget, refit, refit_max_iter)
    name, sigma, dsigma = resolve_activation(activation, problem.activation)
    X = np.asarray(problem.X, dtype=np.float64)
    Z0 = X @ problem.W0.T
    if problem.bias is not None:
        Z0 += problem.bias
    Y = checked_call(sigma, Z0, "the activation")
    model = _Model(X, Y, sigma, dsigma)
    y_energy = float(np.einsum("ij,ij->", Y, Y))

    W, b, mask, init_label = _start_point(problem, init)
    t_start = time.perf_counter()  # the budget covers this solver's own work, not the init
    deadline = None if time_budget is None else t_start + float(time_budget)
    loss, state = model.loss(W, b)
    loss_init = loss
    t = _initial_step(problem.H)
    step0 = t
    history = [{"iter": 0, "loss": loss, "step": t}]
    status, it = "max_iter", 0
    while it < max_iter:
        if loss == 0.0:
            status = "solved"
            break
        if deadline is not None and time.perf_counter() > deadline:
            status = "time_budget"
            break
        GW, gb = model.grad(state)
        for _ in range(_MAX_HALVINGS):
            V = W - t * GW
            mask_n = project_mask(np.abs(V), problem.pattern, problem.nnz)
            Wn = np.where(mask_n, V, 0.0)
            bn = None if b is None else b - t * gb
            ln, state_n = model.loss(Wn, bn)
            dW = Wn - W
            model_val = float(np.einsum("ij,ij->", GW, dW)) + float(np.sum(dW * dW)) / (2 * t)
            if b is not None:
                db = bn - b
                model_val += float(gb @ db) + float(db @ db) / (2 * t)
            if ln <= loss + model_val:
                break
            t *= 0.5
        else:
            status = "stalled"  # no step decreases L: a stationary point of IHT
            break
        it += 1
        prev = loss
        W, b, mask, loss, state = Wn, bn, mask_n, ln, state_n
        history.append({"iter": it, "loss": loss, "step": t})
        t *= _GROW
        if prev - loss <= tol * prev:
            status = "solved"
            break

    if not is_valid_mask(mask, problem.pattern, problem.nnz):  # a bug guard, never expected
        raise RuntimeError("l0-general produced a mask off the pattern")
    loss_iht, refit_iters = loss, 0
    if refit and refit_max_iter > 0 and loss > 0:
        Wr, br, refit_iters = _refit_support(model, W, b, mask, int(refit_max_iter), deadline)
        lr, state_r = model.loss(Wr, br)
        if lr <= loss:  # the Armijo search only ever lowers L; kept as a guard
            W, b, loss, state = Wr, br, lr, state_r
        if deadline is not None and time.perf_counter() > deadline:
            status = "time_budget"  # the refit may have been cut short too
    GW, gb = model.grad(state)
    g_sup = GW[mask] if b is None else np.concatenate([GW[mask], gb])

    Wa = W if b is None else np.hstack([W, b[:, None]])
    settings = {
        "activation": name,
        "init": init_label,
        "max_iter": int(max_iter),
        "tol": tol,
        "time_budget": time_budget,
        "refit": bool(refit),
        "refit_max_iter": int(refit_max_iter),
        "step0": step0,
        "loss_evals": model.evals,
        "refit_iterations": refit_iters,
    }
    certificate = {
        "loss_init": loss_init,
        "loss_iht": loss_iht,
        "loss": loss,
        "rel_loss": loss / y_energy if y_energy > 0 else (0.0 if loss == 0 else float("inf")),
        "grad_norm_on_support": float(np.linalg.norm(g_sup)),
    }
    return finalize(
        problem,
        Wa,
        mask,
        solver="l0-general",
        settings=settings,
        t0=t0,
        iterations=it,
        status=status,
        history=history,
        certificate=certificate,
    )
