"""Streaming Gram accumulator: H = X^T X in float64 without ever holding all n rows."""

from __future__ import annotations

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.validate import check_int, real_finite_array


def _as_batch(name: str, X, d: int) -> np.ndarray:
    try:
        single = np.ndim(X) == 1  # a single sample
    except ValueError:  # ragged: let the shared check name it
        single = False
    X = real_finite_array(f"{name} batch", np.asarray(X)[None, :] if single else X, 2)
    if X.shape[1] != d:
        raise InvalidInputError(f"{name} batch has {X.shape[1]} columns, expected d={d}")
    return X


class Gram:
    """Accumulates H = X^T X, the column sums of X and n, batch by batch, in float64.

    Memory is O(d^2) whatever n is. With ``d0`` set, it also accumulates the cascade cross
    term C = X^T X0 between the (pruned-network) inputs X and the original inputs X0.

    Parameters
    ----------
    d : int
        Number of input features (columns of X).
    d0 : int, optional
        Number of columns of X0 for the cross term; usually equal to d.

    Examples
    --------
    >>> g = Gram(3)
    >>> for batch in np.array_split(np.ones((10, 3)), 4):
    ...     g.update(batch)
    >>> g.n, g.H[0, 0]
    (10, 10.0)
    """

    def __init__(self, d: int, d0: int | None = None) -> None:
        check_int("Gram dimension d", d)
        check_int("Gram dimension d0", d0, allow_none=True)
        self.d = int(d)
        self.d0 = None if d0 is None else int(d0)
        self.n = 0
        self._empty = True  # nothing added yet (add_stats may then adopt its arrays)
        self.H = np.zeros((self.d, self.d), dtype=np.float64)
        self.sum = np.zeros(self.d, dtype=np.float64)
        self.cross: np.ndarray | None = None
        self.sum0: np.ndarray | None = None
        if d0 is not None:
            self.cross = np.zeros((self.d, int(d0)), dtype=np.float64)
            self.sum0 = np.zeros(int(d0), dtype=np.float64)

    def update(self, X, X0=None) -> Gram:
        """Add one batch of rows (n_b x d); with a cross term, also its X0 batch (n_b x d0)."""
        X = _as_batch("X", X, self.d).astype(np.float64, copy=False)
        cross = None
        if self.cross is not None and self.d0 is not None:
            if X0 is None:
                raise InvalidInputError("this Gram tracks the cross term: pass X0 with every batch")
            X0 = _as_batch("X0", X0, self.d0).astype(np.float64, copy=False)
            if X0.shape[0] != X.shape[0]:
                raise InvalidInputError(
                    f"X has {X.shape[0]} rows but X0 has {X0.shape[0]}: they must pair up"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                cross = self.cross + X.T @ X0
        elif X0 is not None:
            raise InvalidInputError("X0 given but this Gram was built without d0 (no cross term)")
        with np.errstate(over="ignore", invalid="ignore"):
            H = self.H + X.T @ X
        # checked before anything is committed, so a refused batch leaves the state valid
        if not np.all(np.isfinite(H)) or (cross is not None and not np.all(np.isfinite(cross))):
            raise InvalidInputError("X^T X overflows float64 on this batch: rescale the inputs")
        self.H, self._empty = H, False
        self.sum += X.sum(axis=0)
        if cross is not None and self.sum0 is not None and X0 is not None:
            self.cross = cross
            self.sum0 += X0.sum(axis=0)
        self.n += X.shape[0]
        return self

    def add_stats(self, H, total, n: int, cross=None, total0=None, *,
                  adopt: bool = False) -> Gram:
        """Add one batch given by its own statistics (X^T X, column sums, row count; and
        X^T X0 and X0's column sums with a cross term), computed elsewhere in float64, e.g.
        by torch next to the activations. Only the d x d results are checked.

        adopt : when this Gram is still empty, keep H (and cross) themselves where they are
            C-contiguous float64 arrays, instead of adding them to zeros: the caller gives
            them up (the end of a calibration, where the d x d pass was a fifth of the
            finish)."""
        H = np.asarray(H, dtype=np.float64)
        total = np.asarray(total, dtype=np.float64)
        if H.shape != self.H.shape or total.shape != self.sum.shape:
            raise InvalidInputError(f"batch statistics of shapes {H.shape}, {total.shape} do "
                                    f"not fit a Gram of d={self.d}")
        if (cross is None) != (self.cross is None):
            raise InvalidInputError("the cross term must be given exactly when this Gram has d0")
        if cross is not None:
            cross = np.asarray(cross, dtype=np.float64)
            if self.cross is not None and cross.shape != self.cross.shape:
                raise InvalidInputError(f"a cross term of shape {cross.shape} does not fit a "
                                        f"Gram of d={self.d}, d0={self.d0}")
        fresh = adopt and getattr(self, "_empty", False) and self.n == 0
        new_H = np.ascontiguousarray(H) if fresh else self.H + H
        new_cross = None if cross is None or self.cross is None else (
            np.ascontiguousarray(cross) if fresh else self.cross + cross)
        if not np.all(np.isfinite(new_H)) or not np.all(np.isfinite(total)) or (
                new_cross is not None and not np.all(np.isfinite(new_cross))):
            raise InvalidInputError("X batch contains NaN or Inf (or X^T X overflows)")
        self.H, self._empty = new_H, False
        self.sum += total
        if new_cross is not None and self.sum0 is not None:
            self.cross = new_cross
            self.sum0 += np.asarray(total0, dtype=np.float64)
        self.n += int(n)
        return self

    @classmethod
    def holding(cls, H: np.ndarray, total: np.ndarray, n: int, cross: np.ndarray | None = None,
                total0: np.ndarray | None = None, *, finite: bool = False) -> Gram:
        """A Gram that keeps the given statistics themselves (float64 arrays, H and cross
        C-contiguous; not copied): the end of a calibration, which gives them up, without the
        zeros a fresh Gram would fill first. ``finite``: the caller has checked H (a pass over
        d^2 entries saved); everything else is checked here."""
        H, total = np.asarray(H), np.asarray(total)
        d = total.shape[0] if total.ndim == 1 else -1
        if H.dtype != np.float64 or H.shape != (d, d) or not H.flags.c_contiguous:
            raise InvalidInputError(f"Gram.holding needs a C-contiguous float64 d x d H and a "
                                    f"length-d sum, got {H.shape} ({H.dtype}) and {total.shape}")
        g = cls.__new__(cls)  # not __init__: its zeros are what this saves
        g.d, g.d0, g.n, g._empty = d, None, int(n), False
        g.H, g.sum = H, np.asarray(total, dtype=np.float64)
        g.cross = g.sum0 = None
        if cross is not None:
            cross, sum0 = np.asarray(cross), np.asarray(total0, dtype=np.float64)
            if cross.dtype != np.float64 or cross.ndim != 2 or cross.shape[0] != d or (
                    sum0.shape != cross.shape[1:]) or not cross.flags.c_contiguous:
                raise InvalidInputError(f"Gram.holding needs a C-contiguous float64 d x d0 cross "
                                        f"term and a length-d0 sum, got {cross.shape} and "
                                        f"{sum0.shape}")
            g.d0, g.cross, g.sum0 = cross.shape[1], cross, sum0
        if not (finite or np.all(np.isfinite(H))) or not np.all(np.isfinite(g.sum)) or (
                g.cross is not None and not (np.all(np.isfinite(g.cross))
                                             and np.all(np.isfinite(np.asarray(g.sum0))))):
            raise InvalidInputError("X batch contains NaN or Inf (or X^T X overflows)")
        return g

    @classmethod
    def from_data(cls, X, batch_size: int = 4096) -> Gram:
        """Accumulate a whole array in batches (bounds the float64 temporary to one batch)."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise InvalidInputError(f"X must be 2-D (n x d), got shape {X.shape}")
        g = cls(X.shape[1])
        for start in range(0, X.shape[0], batch_size):
            g.update(X[start : start + batch_size])
        return g

    def augmented(self) -> np.ndarray:
        """The (d+1) x (d+1) Gram of [X, 1]: what a layer with a bias is solved on."""
        Ha = np.empty((self.d + 1, self.d + 1), dtype=np.float64)
        Ha[: self.d, : self.d] = self.H
        Ha[: self.d, self.d] = self.sum
        Ha[self.d, : self.d] = self.sum
        Ha[self.d, self.d] = self.n
        return Ha

    def __repr__(self) -> str:
        cross = "" if self.cross is None else f", d0={self.d0}"
        return f"Gram(d={self.d}{cross}, n={self.n})"
