"""The one array check at the boundary: real, numeric, finite, of the expected rank."""

from __future__ import annotations

import numpy as np

from layertrim.errors import InvalidInputError


def real_finite_array(name: str, A, ndim: int) -> np.ndarray:
    """``np.asarray(A)`` after checking it is a real numeric ``ndim``-D array without NaN/Inf."""
    try:
        A = np.asarray(A)
    except (ValueError, TypeError) as e:
        raise InvalidInputError(f"{name} is not a rectangular numeric array ({e})") from None
    if A.ndim != ndim:
        raise InvalidInputError(f"{name} must be {ndim}-D, got shape {A.shape}")
    if not np.issubdtype(A.dtype, np.number) or np.iscomplexobj(A):
        raise InvalidInputError(f"{name} must be a real numeric array, got dtype {A.dtype}")
    if not np.all(np.isfinite(A)):
        raise InvalidInputError(f"{name} contains NaN or Inf")
    return A
