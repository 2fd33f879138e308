"""Named activations with their derivatives, for solvers that fit sigma(X W^T + b).

Every activation is a pair (sigma, dsigma) of elementwise functions on float64 arrays. The
names match :data:`layertrim.problem.ACTIVATIONS`; ``"other"`` stands for a user-supplied
pair, which has to come with its derivative because the solvers follow gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.special

from layertrim.errors import InvalidInputError

ArrayFn = Callable[[np.ndarray], np.ndarray]

LEAKY_SLOPE = 0.01  # PyTorch's default negative slope for LeakyReLU
_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_INV_SQRT2PI = 1.0 / np.sqrt(2.0 * np.pi)


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def relu_grad(z: np.ndarray) -> np.ndarray:
    # the subgradient 0 at z = 0: a unit that sits exactly at the kink gets no push
    return (z > 0).astype(np.float64)


def leaky_relu(z: np.ndarray) -> np.ndarray:
    return np.where(z > 0, z, LEAKY_SLOPE * z)


def leaky_relu_grad(z: np.ndarray) -> np.ndarray:
    return np.where(z > 0, 1.0, LEAKY_SLOPE)


def tanh(z: np.ndarray) -> np.ndarray:
    return np.tanh(z)


def tanh_grad(z: np.ndarray) -> np.ndarray:
    t = np.tanh(z)
    return 1.0 - t * t


def sigmoid(z: np.ndarray) -> np.ndarray:
    # expit evaluates exp(-|z|) only, so neither tail overflows
    return scipy.special.expit(z)


def sigmoid_grad(z: np.ndarray) -> np.ndarray:
    s = scipy.special.expit(z)
    return s * (1.0 - s)


def gelu(z: np.ndarray) -> np.ndarray:
    """Exact GELU z * Phi(z) with the normal CDF from erf (not the tanh approximation)."""
    return z * 0.5 * (1.0 + scipy.special.erf(z * _INV_SQRT2))


def gelu_grad(z: np.ndarray) -> np.ndarray:
    """d/dz z Phi(z) = Phi(z) + z phi(z)."""
    cdf = 0.5 * (1.0 + scipy.special.erf(z * _INV_SQRT2))
    return cdf + z * _INV_SQRT2PI * np.exp(-0.5 * z * z)


def linear(z: np.ndarray) -> np.ndarray:
    return np.asarray(z, dtype=np.float64)


def linear_grad(z: np.ndarray) -> np.ndarray:
    return np.ones_like(z, dtype=np.float64)


NAMED: dict[str, tuple[ArrayFn, ArrayFn]] = {
    "linear": (linear, linear_grad),
    "relu": (relu, relu_grad),
    "leaky_relu": (leaky_relu, leaky_relu_grad),
    "tanh": (tanh, tanh_grad),
    "sigmoid": (sigmoid, sigmoid_grad),
    "gelu": (gelu, gelu_grad),
}


def resolve_activation(spec, default_name: str) -> tuple[str, ArrayFn, ArrayFn]:
    """Turn an activation spec into ``(name, sigma, dsigma)``.

    Parameters
    ----------
    spec : None, a name from :data:`NAMED`, or a pair ``(sigma, dsigma)`` of callables that
        map a float64 array to an array of the same shape (the activation and its derivative).
        None means ``default_name`` (the problem's own activation).
    default_name : the activation string stored on the problem.

    Returns
    -------
    name : the activation's name; ``"other"`` for a user-supplied pair.
    sigma, dsigma : the activation and its derivative.

    Raises
    ------
    InvalidInputError
        For an unknown name, a lone callable, a pair that is not two callables, or the name
        ``"other"`` with no pair: a sigma without its derivative cannot be used.
    """
    if spec is None:
        spec = default_name
    if isinstance(spec, str):
        if spec == "other":
            raise InvalidInputError(
                "activation 'other' needs the function itself: pass activation=(sigma, dsigma), "
                "the activation and its derivative (a σ without its derivative cannot be used)"
            )
        if spec not in NAMED:
            known = ", ".join(NAMED)
            raise InvalidInputError(
                f"unknown activation {spec!r}; known: {known}, or a pair (sigma, dsigma)"
            )
        sigma, dsigma = NAMED[spec]
        return spec, sigma, dsigma
    if callable(spec):
        raise InvalidInputError(
            "activation given as a single function: pass (sigma, dsigma), the activation and "
            "its derivative (a σ without its derivative cannot be used)"
        )
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        sigma, dsigma = spec
        if callable(sigma) and callable(dsigma):
            return "other", sigma, dsigma
        raise InvalidInputError(
            "activation pair must be two callables (sigma, dsigma); got "
            f"({type(sigma).__name__}, {type(dsigma).__name__}) - a σ without its derivative "
            "cannot be used"
        )
    raise InvalidInputError(
        f"activation must be a name ({', '.join(NAMED)}) or a pair (sigma, dsigma), got {spec!r}"
    )


def checked_call(fn: ArrayFn, z: np.ndarray, what: str) -> np.ndarray:
    """Call a (possibly user-supplied) elementwise function and check what comes back.

    A wrong shape or a NaN would otherwise surface much later as a puzzling numpy error or
    a loss that never decreases.
    """
    out = np.asarray(fn(z), dtype=np.float64)
    if out.shape != z.shape:
        raise InvalidInputError(
            f"{what} returned shape {out.shape} for input of shape {z.shape}: "
            "it must act elementwise"
        )
    if not np.all(np.isfinite(out)):
        raise InvalidInputError(f"{what} returned NaN or inf on the layer's pre-activations")
    return out
