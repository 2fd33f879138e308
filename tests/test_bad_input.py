"""Every bad input raises InvalidInputError (a ValueError) whose message names the problem."""

import numpy as np
import pytest

import layertrim as lt
from layertrim import InvalidInputError


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    return rng.standard_normal((4, 8)), rng.standard_normal((20, 8))


def test_error_type_is_a_value_error():
    assert issubclass(InvalidInputError, ValueError)


@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"X": np.ones((20, 7))}, "shape mismatch: X has 7 columns"),
        ({"X": None, "gram": np.eye(7)}, r"shape mismatch: H has shape \(7, 7\)"),
        ({"bias": np.ones(5)}, "bias has length 5"),
        ({"X": None, "gram": np.eye(8), "bias": np.ones(4)}, r"Gram of \[X, 1\]"),
        ({"X": None, "gram": lt.Gram(9).update(np.ones((2, 9)))}, "Gram has d=9"),
        ({"X": None, "gram": np.triu(np.ones((8, 8)))}, "not symmetric"),
        ({"X": None, "gram": -np.eye(8)}, "negative diagonal"),
        ({"X": None}, "pass calibration inputs X or a Gram"),
        ({"X": np.ones((0, 8))}, "X has no rows"),
        ({"X": None, "gram": lt.Gram(8)}, "empty"),
    ],
)
def test_shapes_that_disagree(small, kwargs, msg):
    W, X = small
    args = {"X": X, "sparsity": 0.5, **kwargs}
    with pytest.raises(InvalidInputError, match=msg):
        lt.solve_layer(W, args.pop("X"), **args)


@pytest.mark.parametrize("where", ["W", "X", "H", "bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_anywhere(small, where, value):
    W, X = small
    W, X = W.copy(), X.copy()
    H, b = X.T @ X, np.zeros(4)
    {"W": W, "X": X, "H": H, "bias": b}[where][0, ...] = value
    kwargs = {"gram": H} if where == "H" else {}
    if where == "bias":
        kwargs["bias"] = b
    with pytest.raises(InvalidInputError, match=f"{where} contains NaN or Inf"):
        lt.solve_layer(W, None if where == "H" else X, sparsity=0.5, **kwargs)


@pytest.mark.parametrize("s", [1.0, 1.5, -0.1, float("nan"), float("inf")])
def test_sparsity_outside_unit_interval(small, s):
    W, X = small
    with pytest.raises(InvalidInputError, match=r"outside \[0, 1\)"):
        lt.solve_layer(W, X, sparsity=s)


def test_sparsity_not_a_number(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="sparsity must be a number"):
        lt.solve_layer(W, X, sparsity="0.5")


@pytest.mark.parametrize("nnz, msg", [(33, "exceeds the m\\*d=32"), (0, "at least one"),
                                      (2.5, "integer count"), (float("inf"), "integer count")])
def test_bad_counts(small, nnz, msg):
    W, X = small
    with pytest.raises(InvalidInputError, match=msg):
        lt.solve_layer(W, X, nnz=nnz)


def test_missing_or_double_target(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="missing sparsity target"):
        lt.solve_layer(W, X)
    with pytest.raises(InvalidInputError, match="not both"):
        lt.solve_layer(W, X, sparsity=0.5, nnz=3)


def test_row_count_must_split_evenly(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="not a multiple of m"):
        lt.solve_layer(W, X, nnz=5, pattern="row")


@pytest.mark.parametrize("pattern, msg", [("3:5", "M=5 does not divide the input dimension d=8"),
                                          ("4:4", "0 < N < M"), ("a:b", "two integers"),
                                          ("blocks", "unknown pattern")])
def test_bad_patterns(small, pattern, msg):
    W, X = small
    with pytest.raises(InvalidInputError, match=msg):
        lt.solve_layer(W, X, pattern=pattern, sparsity=0.5)


def test_nm_pattern_conflicting_with_sparsity(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="fixes sparsity at 0.5"):
        lt.solve_layer(W, X, pattern="2:4", sparsity=0.7)


def test_unknown_method_lists_the_known_ones(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="unknown method 'obs'.*sparsegpt"):
        lt.solve_layer(W, X, sparsity=0.5, method="obs")


def test_unknown_solver_option(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="has no option.*blocksze"):
        lt.solve_layer(W, X, sparsity=0.5, method="sparsegpt", blocksze=64)


def test_unknown_activation_and_bad_dims(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="unknown activation"):
        lt.solve_layer(W, X, sparsity=0.5, activation="swishy")
    with pytest.raises(InvalidInputError, match="W must be 2-D"):
        lt.solve_layer(W[0], X, sparsity=0.5)
    with pytest.raises(InvalidInputError, match="real numeric"):
        lt.solve_layer(W.astype(str), X, sparsity=0.5)


def test_inputs_are_never_modified(small):
    W, X = small
    b = np.ones(4)
    copies = W.copy(), X.copy(), b.copy()
    for method in lt.methods():
        # the exact ReLU solver separates over neurons: it needs a per-row budget
        pattern = "row" if method == "l0-cutting-plane" else "layer"
        lt.solve_layer(W, X, bias=b, sparsity=0.5, method=method, refit=True, pattern=pattern,
                       activation="relu")
    for a, c in zip((W, X, b), copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_indefinite_h_is_not_a_gram():
    with pytest.raises(InvalidInputError, match="not positive semidefinite"):
        lt.solve_layer(np.ones((1, 2)), gram=np.array([[1.0, 2.0], [2.0, 1.0]]), nnz=1)


def test_x_and_gram_that_disagree(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="does not match"):
        lt.solve_layer(W, X, gram=np.eye(8), sparsity=0.5)
    r = lt.solve_layer(W, X, gram=lt.Gram.from_data(X), sparsity=0.5)
    assert r.nnz == 16


def test_gram_overflow_is_reported(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="overflows"):
        lt.solve_layer(W, X * 1e160, sparsity=0.5)


def test_malformed_arguments(small):
    W, X = small
    with pytest.raises(InvalidInputError, match="rectangular"):
        lt.solve_layer([[1.0, 2.0], [3.0]], X, sparsity=0.5)
    with pytest.raises(InvalidInputError, match="method must be"):
        lt.solve_layer(W, X, sparsity=0.5, method=["sparsegpt"])
    with pytest.raises(InvalidInputError, match="seed"):
        lt.solve_layer(W, X, sparsity=0.5, method="random", seed=-1)
    with pytest.raises(InvalidInputError, match="blocksize"):
        lt.solve_layer(W, X, sparsity=0.5, method="sparsegpt", blocksize="x")
    with pytest.raises(InvalidInputError, match="damp"):
        lt.solve_layer(W, X, sparsity=0.5, method="sparsegpt", damp=float("inf"))
    with pytest.raises(InvalidInputError, match="outside"):
        lt.solve_layer(W, X, sparsity=10**400)
    with pytest.raises(InvalidInputError, match="sparsity must be a number"):
        lt.solve_layer(W, X, sparsity=np.complex128(0.5))
    with pytest.raises(InvalidInputError, match="positive integer"):
        lt.Gram(2.5)
    with pytest.raises(InvalidInputError, match="real numeric"):
        lt.Gram(2).update(np.ones((3, 2), dtype=complex))


@pytest.mark.parametrize("args", [("blah",), ("nm", 0, 0), ("nm", 4, 2)])
def test_pattern_objects_are_validated(args):
    with pytest.raises(InvalidInputError, match="pattern"):
        lt.Pattern(*args)


def test_option_values_that_used_to_escape_as_raw_errors(small):
    """From a review: an integer beyond 2**64 for a real option (np.isfinite refused the
    Python int), a float or list seed for coreset, the string "false" for a switch (read as
    true), and a layer whose output energy overflows float64 (Net-Trim divided by zero, the
    others returned inf errors) are all refused by name."""
    W, X = small
    r = lt.solve_layer(W, X, sparsity=0.5, method="sparsegpt", damp=10**30)
    assert r.nnz == W.size // 2  # a huge but finite damp is a valid one
    with pytest.raises(InvalidInputError, match="damp must be a finite number"):
        lt.solve_layer(W, X, sparsity=0.5, method="sparsegpt", damp=10**400)
    for bad in (1.5, [1, 2], -1):
        with pytest.raises(InvalidInputError, match="seed must be a non-negative integer"):
            lt.solve_layer(W, X, sparsity=0.5, method="coreset", seed=bad)
    with pytest.raises(InvalidInputError, match="deterministic must be True or False"):
        lt.solve_layer(W, X, sparsity=0.5, method="coreset", deterministic="false")
    with pytest.raises(InvalidInputError, match="refit must be True or False"):
        lt.solve_layer(W, X, sparsity=0.5, method="pivot", block=2, refit="false")
    for method in ("nettrim", "sparsegpt", "l0-admm"):
        with pytest.raises(InvalidInputError, match="overflows float64"):
            lt.solve_layer(W * 1e160, X, sparsity=0.5, method=method, activation="relu")
