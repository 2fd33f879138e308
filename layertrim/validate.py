"""Checks at the boundary: real, finite arrays of the expected rank; integer and real-number
options."""

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


def check_int(name: str, value, minimum: int = 1, *, allow_none: bool = False) -> int | None:
    """An integer option (a Python or numpy integer, not a bool) of at least ``minimum``,
    returned as ``int``; None passes through when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InvalidInputError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_real(name: str, value, *, strict: bool = True, allow_none: bool = False
               ) -> float | None:
    """A real-number option (a Python or numpy number, not a bool or a string), finite and
    > 0 (``strict``) or >= 0, returned as ``float``; None passes through when ``allow_none``."""
    if value is None and allow_none:
        return None
    kinds = (int, float, np.integer, np.floating)
    try:  # float() first: a Python int beyond 2**64 is no numpy number (np.isfinite fails)
        v = float(value) if isinstance(value, kinds) and not isinstance(value, bool) else None
    except OverflowError:
        v = None
    if v is None or not np.isfinite(v) or v < 0 or (strict and v == 0):
        raise InvalidInputError(f"{name} must be a finite number {'>' if strict else '>='} 0, "
                                f"got {value!r}")
    return v


def check_seed(name: str, value) -> int:
    """A random seed: a non-negative integer (a float or a list is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidInputError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_bool(name: str, value) -> bool:
    """A switch: True or False (numpy's too); a string such as "false" is refused, not read
    as truthy."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInputError(f"{name} must be True or False, got {value!r}")
    return bool(value)
