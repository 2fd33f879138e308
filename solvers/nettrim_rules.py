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


def bisect_gain(solve_at, gain: float, target: float, max_bisect: int, d: int):
    """Bisection on log(gain) until the pruned fraction of the first d columns of W is within
    1% of ``target`` (the kept fraction falls as the gain grows). ``solve_at(g)`` returns W or
    a tuple starting with W; its results warm-start each other where the solver allows.

    Returns (the last solve_at output, the last gain, [{"gain", "sparsity"} per step])."""
    lo, hi, g = 1e-4, 1.0, gain
    steps = []
    for _ in range(max_bisect):
        out = solve_at(g)
        W = out[0] if isinstance(out, tuple) else out
        sp = 1.0 - np.count_nonzero(W[:, :d]) / W[:, :d].size
        steps.append({"gain": g, "sparsity": float(sp)})
        if abs(sp - target) <= 0.01:
            break
        lo, hi = (g, hi) if sp < target else (lo, g)
        g = float(np.sqrt(lo * hi))
    return out, g, steps


def radius_at(base_eps, gain: float, eps_min: float) -> np.ndarray:
    """The radius at ``gain``: gain * base_eps, but never below ``eps_min`` (the cascade
    rule's radius, which keeps W0 feasible when a sparsity target drives the gain)."""
    return np.maximum(np.asarray(base_eps, dtype=np.float64) * gain, eps_min)


def check_eps_min(eps_min) -> float:
    if (isinstance(eps_min, bool) or not isinstance(eps_min, (int, float, np.number))
            or not np.isfinite(eps_min) or eps_min < 0):
        raise InvalidInputError(f"eps_min must be a finite number >= 0, got {eps_min!r}")
    return float(eps_min)


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
                 gamma: float = CASCADE_GAMMA, omega_tol: float = 0.0) -> NetTrimTargets:
    """Layer l sees the pruned network's input X_hat but must match the original output Y.

    ReLU (hidden layer): Omega = {Y > omega_tol}, V = X_hat W0^T off Omega and
    eps = gamma ||(X_hat W0^T - Y)_Omega||_F. Linear (last layer, Y = Z0 the original logits):
    eps = gamma ||X_hat W0^T - Z0||_F. The first layer has X_hat = X: use ``parallel_rule``.
    """
    Y = real_finite_array("Y", Y, 2).astype(np.float64)
    if Y.shape != (Xa_hat.shape[0], W0a.shape[0]):
        raise InvalidInputError(f"shape mismatch: Y has shape {Y.shape}, expected "
                                f"(n, m) = ({Xa_hat.shape[0]}, {W0a.shape[0]})")
    Z_hat = Xa_hat @ W0a.T
    if not relu:
        return NetTrimTargets(Y, None, None, gamma * float(np.linalg.norm(Z_hat - Y)))
    omega = Y > omega_tol
    if not omega.any():
        raise InvalidInputError("Y has no positive entry: this ReLU layer is off on every sample")
    eps = gamma * float(np.linalg.norm(np.where(omega, Z_hat - Y, 0.0)))
    return NetTrimTargets(Y, omega, Z_hat, eps)
