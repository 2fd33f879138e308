"""What the structured solvers share: the result of pruning the neurons of one layer (kept
indices plus the rewired next layer), the validation of a layer pair, and the physical shrink.

Pruning neuron j of layer l removes row j of (W_l, b_l) and column j of W_{l+1}. A structured
result keeps the sorted indices of the surviving neurons and a weight per kept neuron that
multiplies its column of W_{l+1} (1 when nothing is reweighted), or a refitted W_{l+1} outright,
so ``shrink_pair`` can return the two smaller dense matrices and adapters can rewrite models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.validate import real_finite_array


@dataclass
class StructuredResult:
    """Neurons of layer l kept, and layer l+1 rewired onto them.

    Attributes
    ----------
    kept : (k,) sorted int indices of the kept neurons of layer l.
    scale : (k,) weight multiplying each kept neuron's column of W_{l+1}.
    W1, b1 : (k, d) and (k,) (or None): layer l restricted to the kept neurons.
    W2, b2 : (n2, k) and (n2,) (or None): layer l+1 on the kept neurons (reweighted or refit).
    sensitivity : (n,) the score each neuron was sampled or ranked by.
    n_samples : draws made (sampling variants); the number kept for deterministic ones.
    method : how the neurons were chosen; ``settings`` holds the options.
    rel_error : ||A (W2_full - W2)^T||_F^2 / ||A W2^T||_F^2 on the calibration activations A
        (with the bias column), or None without calibration data.
    """

    kept: np.ndarray
    scale: np.ndarray
    W1: np.ndarray
    b1: np.ndarray | None
    W2: np.ndarray
    b2: np.ndarray | None
    sensitivity: np.ndarray
    n_samples: int
    method: str
    settings: dict = field(default_factory=dict)
    rel_error: float | None = None

    @property
    def n_kept(self) -> int:
        return int(self.kept.size)

    def summary(self) -> dict:
        return {"method": self.method, "n_kept": self.n_kept, "n_samples": self.n_samples,
                "rel_error": self.rel_error, **self.settings}


def check_pair(W1, b1, W2, b2=None):
    """Validate a layer pair (layer l: W1 (n, d), b1 (n,); layer l+1: W2 (n2, n), b2 (n2,))
    and return float64 copies. The shapes must chain: W2 has one column per row of W1."""
    W1 = real_finite_array("W1", W1, 2).astype(np.float64)
    W2 = real_finite_array("W2", W2, 2).astype(np.float64)
    if W1.size == 0 or W2.size == 0:
        raise InvalidInputError(f"empty layer: W1 {W1.shape}, W2 {W2.shape}")
    if W2.shape[1] != W1.shape[0]:
        raise InvalidInputError(
            f"layer shapes do not chain: W1 has {W1.shape[0]} output neurons but W2 has "
            f"{W2.shape[1]} input columns (W2 must be (n2, {W1.shape[0]}))")
    b1 = _bias("b1", b1, W1.shape[0])
    b2 = _bias("b2", b2, W2.shape[0])
    return W1, b1, W2, b2


def _bias(name, b, n):
    if b is None:
        return None
    b = real_finite_array(name, b, 1).astype(np.float64)
    if b.shape[0] != n:
        raise InvalidInputError(f"{name} has length {b.shape[0]}, expected {n}")
    return b


def check_keep(keep, n: int, what: str = "neurons") -> int:
    """A neuron count in [1, n] (an int), or a fraction in (0, 1] (a float) of n."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)):
        raise InvalidInputError(f"keep must be a count or a fraction, got {keep!r}")
    if isinstance(keep, (float, np.floating)):
        if not (0.0 < keep <= 1.0):
            raise InvalidInputError(f"keep fraction {keep!r} is outside (0, 1]")
        keep = max(1, int(round(keep * n)))
    keep = int(keep)
    if keep < 1:
        raise InvalidInputError(f"keep={keep}: at least one of the {n} {what} must be kept")
    if keep > n:
        raise InvalidInputError(f"keep={keep} exceeds the {n} {what} that exist")
    return keep


def check_eps_delta(epsilon, delta) -> tuple[float, float]:
    """epsilon > 0 (finite) and delta in (0, 1)."""
    for name, v in (("epsilon", epsilon), ("delta", delta)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise InvalidInputError(f"{name} must be a number, got {v!r}")
    if not (0 < epsilon < np.inf):
        raise InvalidInputError(f"epsilon must be > 0, got {epsilon!r}")
    if not (0 < delta < 1):
        raise InvalidInputError(f"delta must be in (0, 1), got {delta!r}")
    return float(epsilon), float(delta)


def check_activations(A, n: int, name: str = "A") -> np.ndarray:
    """Calibration activations of layer l: (samples, n)."""
    A = real_finite_array(name, A, 2).astype(np.float64)
    if A.shape[1] != n:
        raise InvalidInputError(f"{name} has {A.shape[1]} columns, expected one per neuron ({n})")
    if A.shape[0] == 0:
        raise InvalidInputError(f"{name} has no rows: at least one calibration sample is needed")
    return A


def shrink_pair(W1, b1, W2, b2, kept, scale=None):
    """The two smaller dense layers: rows ``kept`` of (W1, b1), columns ``kept`` of W2 times
    ``scale``. Returns (W1k, b1k, W2k, b2)."""
    W1, b1, W2, b2 = check_pair(W1, b1, W2, b2)
    kept = check_kept(kept, W1.shape[0])
    s = np.ones(kept.size) if scale is None else np.asarray(scale, dtype=np.float64)
    if s.shape != kept.shape:
        raise InvalidInputError(f"scale has shape {s.shape}, expected {kept.shape}")
    return (W1[kept], None if b1 is None else b1[kept], W2[:, kept] * s,
            None if b2 is None else b2.copy())


def check_kept(kept, n: int) -> np.ndarray:
    """Sorted, unique, in-range indices; at least one, at most n."""
    k = np.asarray(kept)
    if k.ndim != 1 or not np.issubdtype(k.dtype, np.integer):
        raise InvalidInputError(f"kept must be a 1-D array of integer indices, got {kept!r}")
    if k.size == 0:
        raise InvalidInputError(f"keeping 0 of {n} neurons: at least one must be kept")
    if k.min() < 0 or k.max() >= n:
        raise InvalidInputError(f"kept indices must lie in [0, {n}), got [{k.min()}, {k.max()}]")
    if np.unique(k).size != k.size:
        raise InvalidInputError("kept indices repeat")
    return np.sort(k).astype(np.int64)


def pair_rel_error(A, W2, b2, W2hat, b2hat) -> float:
    """||[A,1] ([W2hat,b2hat] - [W2,b2])^T||_F^2 / ||[A,1][W2,b2]^T||_F^2 on activations A."""
    Z0 = A @ W2.T + (0.0 if b2 is None else b2)
    Z = A @ W2hat.T + (0.0 if b2hat is None else b2hat)
    ref = float(np.sum(Z0**2))
    err = float(np.sum((Z - Z0) ** 2))
    return err / ref if ref > 0 else (0.0 if err == 0 else float("inf"))
