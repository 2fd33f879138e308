"""The layer problem: keep a layer's outputs on the calibration data while making it sparse.

A dense layer maps x in R^d to z = W x + b with W in R^{m x d}. With calibration inputs X
(n x d), every least-squares solver needs only the Gram matrix H = X^T X. A layer with a bias
is solved on inputs augmented with a ones column, so its Gram is (d+1) x (d+1) and the bias is
the last, never-pruned column of the augmented weights [W, b].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.pattern import Pattern
from layertrim.validate import real_finite_array

ACTIVATIONS = ("linear", "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "other")


@dataclass
class LayerProblem:
    """A validated single-layer pruning problem. Build it with :meth:`create`.

    Attributes
    ----------
    W0 : (m, d) float64 original weights.
    bias : (m,) float64 or None.
    H : Gram of the solve inputs, float64: (d, d), or (d+1, d+1) with a bias (ones column last).
    X : (n, d) calibration inputs, or None (only solvers with per-sample constraints need it).
    activation : the layer's activation kind (the least-squares solvers ignore it).
    pattern : the sparsity pattern.
    nnz : exact number of weights of W kept (the bias is never counted or pruned).
    """

    W0: np.ndarray
    bias: np.ndarray | None
    H: np.ndarray
    X: np.ndarray | None
    activation: str
    pattern: Pattern
    nnz: int
    options: dict = field(default_factory=dict)
    has_target: bool = True  # False: no sparsity given; nnz = m*d and the solver decides
    _reference: float | None = field(default=None, repr=False, compare=False)

    @property
    def m(self) -> int:
        return self.W0.shape[0]

    @property
    def d(self) -> int:
        return self.W0.shape[1]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nnz / (self.m * self.d)

    @property
    def W0a(self) -> np.ndarray:
        """Augmented weights [W0, b] (a view-free copy only when there is a bias)."""
        if self.bias is None:
            return self.W0
        return np.hstack([self.W0, self.bias[:, None]])

    @property
    def row_nnz(self) -> int:
        """Kept weights per row for the ``row`` and ``N:M`` patterns."""
        return self.nnz // self.m

    @classmethod
    def create(
        cls,
        W,
        X=None,
        *,
        gram=None,
        bias=None,
        sparsity: float | None = None,
        nnz: int | None = None,
        pattern: str | Pattern = "layer",
        activation: str = "linear",
        require_target: bool = True,
    ) -> LayerProblem:
        """Validate inputs and build the problem.

        Parameters
        ----------
        W : (m, d) array, the trained weights.
        X : (n, d) array, calibration inputs. Either X or ``gram`` is required.
        gram : a :class:`Gram`, or an array H = X^T X of shape (d, d); with a bias, a raw array
            must be the (d+1, d+1) Gram of [X, 1] (a Gram object carries what is needed).
        bias : (m,) array, optional.
        sparsity : fraction of weights to remove, in [0, 1).
        nnz : number of weights to keep, in [1, m*d] (alternative to ``sparsity``).
        pattern : ``"layer"``, ``"row"`` or ``"N:M"``.
        activation : one of ``ACTIVATIONS``.
        require_target : with False, a missing sparsity/nnz is allowed (solvers such as Net-Trim
            choose the sparsity themselves); the problem then keeps nnz = m*d.
        """
        W0 = real_finite_array("W", W, 2).astype(np.float64)
        m, d = W0.shape
        if m == 0 or d == 0:
            raise InvalidInputError(f"W must be non-empty, got shape {W0.shape}")
        b = None
        if bias is not None:
            b = real_finite_array("bias", bias, 1).astype(np.float64)
            if b.shape[0] != m:
                raise InvalidInputError(f"bias has length {b.shape[0]} but W has m={m} rows")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise InvalidInputError(f"unknown activation {activation!r}; use one of {ACTIVATIONS}")

        Xarr = None
        if X is not None:
            Xarr = real_finite_array("X", X, 2)
            if Xarr.shape[1] != d:
                raise InvalidInputError(
                    f"shape mismatch: X has {Xarr.shape[1]} columns but W has d={d} inputs"
                )
            if Xarr.shape[0] == 0:
                raise InvalidInputError("X has no rows: at least one calibration sample is needed")
        H = _gram_matrix(gram, Xarr, d, with_bias=b is not None)

        pat = Pattern.parse(pattern)
        pat.check_width(d)
        if not require_target and sparsity is None and nnz is None and pat.kind != "nm":
            problem = cls(W0, b, H, Xarr, activation, pat, m * d, has_target=False)
        else:
            problem = cls(W0, b, H, Xarr, activation, pat, _target_nnz(pat, m, d, sparsity, nnz))
        if not np.isfinite(problem.reference_energy()):  # (computed once, and kept)
            raise InvalidInputError("the layer's output energy ||X W^T||^2 overflows float64: "
                                    "rescale W or X")
        return problem

    def objective(self, Wa: np.ndarray) -> float:
        """Reconstruction error tr((Wa - W0a) H (Wa - W0a)^T) = ||Xa (Wa - W0a)^T||_F^2."""
        D = Wa - self.W0a
        # a PSD quadratic form: a negative value is rounding (-1e-17 where D H D^T is ~0);
        # NaN (weights that blew up) stays NaN
        v = float(np.einsum("ij,ij->", D @ self.H, D))
        return 0.0 if v < 0 else v

    def with_sparsity(self, sparsity: float) -> LayerProblem:
        """The same problem at another sparsity (its arrays shared, not copied or validated
        again; the reference energy computed first, so that every copy carries it): what the
        allocation's error curves solve at each level."""
        self.reference_energy()
        return dataclasses.replace(self, nnz=_target_nnz(self.pattern, self.m, self.d,
                                                        float(sparsity), None))

    def reference_energy(self) -> float:
        """||Xa W0a^T||_F^2, the denominator of the relative error (computed once: a d^2 m
        product is not free on large layers, and W0, b and H never change)."""
        if self._reference is None:
            W = self.W0a
            self._reference = float(np.einsum("ij,ij->", W @ self.H, W))
        return self._reference

    def rel_error(self, objective: float) -> float:
        """objective / ||Xa W0a^T||_F^2 (0 or inf when the layer's output is zero on the data)."""
        return error_ratio(objective, self.reference_energy())

    def mean_diag(self) -> float:
        """mean(diag H) over the real inputs: the scale that dampening is relative to."""
        md = float(np.mean(np.diag(self.H)[: self.d]))
        return md if md > 0 else 1.0


def _gram_matrix(gram, X, d: int, *, with_bias: bool) -> np.ndarray:
    if gram is None and X is None:
        raise InvalidInputError("pass calibration inputs X or a Gram matrix (gram=)")
    if gram is None:
        g = Gram.from_data(X)
        return _check_finite_gram(g.augmented() if with_bias else g.H)
    if isinstance(gram, Gram):
        if gram.d != d:
            raise InvalidInputError(f"shape mismatch: Gram has d={gram.d} but W has d={d} inputs")
        if gram.n == 0:
            raise InvalidInputError("the Gram accumulator is empty (no batch was added)")
        H = gram.augmented() if with_bias else gram.H.copy()
    else:
        H = _raw_gram(gram, d, with_bias)
    H = _check_finite_gram(H)
    if X is not None:
        # X is kept for the per-sample solvers, so it must describe the same data as H
        g = Gram.from_data(X)
        HX = g.augmented() if with_bias else g.H
        if not np.allclose(HX, H, rtol=1e-6, atol=1e-9 * max(float(np.abs(H).max()), 1.0)):
            raise InvalidInputError("X and gram were both given but X^T X does not match the Gram")
    return H


def _check_finite_gram(H: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(H)):
        raise InvalidInputError("the Gram matrix X^T X overflows float64: rescale the inputs")
    return H


def _raw_gram(gram, d: int, with_bias: bool) -> np.ndarray:
    H = real_finite_array("H", gram, 2).astype(np.float64)
    want = d + 1 if with_bias else d
    if H.shape != (want, want):
        hint = " (with a bias, H must be the Gram of [X, 1])" if with_bias else ""
        raise InvalidInputError(
            f"shape mismatch: H has shape {H.shape}, expected ({want}, {want}){hint}"
        )
    scale = max(float(np.max(np.abs(H))), 1e-300)
    if np.max(np.abs(H - H.T)) > 1e-8 * scale:
        raise InvalidInputError("H is not symmetric: it must be a Gram matrix X^T X")
    if np.any(np.diag(H) < 0):
        raise InvalidInputError("H has a negative diagonal entry: it is not a Gram matrix X^T X")
    try:  # a Gram matrix is positive semidefinite; allow round-off relative to its scale
        np.linalg.cholesky((H + H.T) / 2 + 1e-9 * scale * np.eye(H.shape[0]))
    except np.linalg.LinAlgError:
        raise InvalidInputError(
            "H is not positive semidefinite: it is not a Gram matrix X^T X"
        ) from None
    return H


def _target_nnz(pat: Pattern, m: int, d: int, sparsity, nnz) -> int:
    total = m * d
    if sparsity is not None and nnz is not None:
        raise InvalidInputError("give either sparsity (a fraction) or nnz (a count), not both")
    if sparsity is not None:
        real = isinstance(sparsity, (int, float, np.integer, np.floating))
        if isinstance(sparsity, bool) or not real:
            raise InvalidInputError(f"sparsity must be a number, got {sparsity!r}")
        try:
            s = float(sparsity)
        except OverflowError:
            s = float("inf")
        if not (0.0 <= s < 1.0):  # also rejects NaN
            raise InvalidInputError(f"sparsity {sparsity!r} is outside [0, 1)")
    if nnz is not None:
        integral = isinstance(nnz, (int, np.integer)) or (
            isinstance(nnz, (float, np.floating)) and float(nnz).is_integer()
        )
        if isinstance(nnz, bool) or not integral:
            raise InvalidInputError(f"nnz must be an integer count, got {nnz!r}")
        nnz = int(nnz)
        if nnz > total:
            raise InvalidInputError(f"nnz={nnz} exceeds the m*d={total} weights of the layer")
        if nnz < 1:
            raise InvalidInputError(f"nnz={nnz}: at least one weight must be kept")

    if pat.kind == "nm":
        k = total // pat.m * pat.n
        if sparsity is not None and abs(s - (1 - pat.n / pat.m)) > 1e-9:
            raise InvalidInputError(
                f"pattern {pat} fixes sparsity at {1 - pat.n / pat.m:g}, but sparsity={s:g} given"
            )
        if nnz is not None and nnz != k:
            raise InvalidInputError(f"pattern {pat} keeps exactly {k} weights, but nnz={nnz} given")
        return k
    if sparsity is None and nnz is None:
        raise InvalidInputError("missing sparsity target: give sparsity (fraction) or nnz (count)")
    if pat.kind == "row":
        if nnz is not None:
            if nnz % m:
                raise InvalidInputError(
                    f"pattern row keeps the same count in each of the m={m} rows: "
                    f"nnz={nnz} is not a multiple of m"
                )
            return nnz
        per_row = d - round_half_up(s * d)
        if per_row < 1:
            raise InvalidInputError(f"sparsity {s:g} leaves no weight in a row of d={d} inputs")
        return per_row * m
    if nnz is not None:
        return nnz
    k = total - round_half_up(s * total)
    if k < 1:
        raise InvalidInputError(f"sparsity {s:g} leaves no weight among m*d={total}")
    return k


def round_half_up(x: float) -> int:
    """Round to nearest with halves up, so the count never depends on banker's rounding. A
    half that binary floating point put a hair below (0.145 * 100 = 14.499999999999998)
    rounds up as the decimal the user typed does."""
    return int(np.floor(x + 0.5 + 8 * np.spacing(abs(x) + 0.5)))  # a few ulps, any size


def error_ratio(objective: float, reference: float) -> float:
    """objective / reference, where a zero reference (the output is identically zero on the
    data) gives 0 for a zero objective and inf otherwise."""
    if reference > 0:
        return objective / reference
    return 0.0 if objective == 0 else float("inf")
