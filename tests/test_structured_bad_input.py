"""Every bad input of the structured methods gets a clear InvalidInputError (a ValueError)."""

import numpy as np
import pytest

import layertrim as lt
from layertrim.errors import InvalidInputError
from layertrim.solvers.coreset import coreset_prune
from layertrim.solvers.global_threshold import global_threshold
from layertrim.solvers.onthefly import onthefly_prune
from layertrim.solvers.pivot import to_bsr
from layertrim.solvers.structured import shrink_pair

rng = np.random.default_rng(0)
W1, b1, W2 = rng.standard_normal((10, 4)), rng.standard_normal(10), rng.standard_normal((3, 10))
A = np.abs(rng.standard_normal((20, 10)))


@pytest.mark.parametrize("keep", [0, 11, -1, 0.0, 1.5])
def test_keeping_zero_or_too_many_neurons(keep):
    with pytest.raises(InvalidInputError, match="keep"):
        coreset_prune(W1, b1, W2, keep=keep)


def test_keep_none_of_kept_indices():
    with pytest.raises(InvalidInputError, match="keeping 0"):
        shrink_pair(W1, b1, W2, None, np.array([], dtype=int))


@pytest.mark.parametrize("eps,delta", [(0, 0.1), (-1, 0.1), (float("inf"), 0.1), (0.5, 0),
                                       (0.5, 1), (0.5, 1.5), (0.5, -0.1)])
def test_epsilon_and_delta_ranges(eps, delta):
    with pytest.raises(InvalidInputError, match="epsilon|delta"):
        coreset_prune(W1, b1, W2, epsilon=eps, delta=delta)


def test_layer_pairs_that_do_not_chain():
    with pytest.raises(InvalidInputError, match="do not chain"):
        coreset_prune(W1, b1, W2[:, :9], keep=3)
    with pytest.raises(InvalidInputError, match="do not chain"):
        global_threshold([W1.T, W2], target_fraction=0.5)
    with pytest.raises(InvalidInputError, match="b1 has length"):
        coreset_prune(W1, b1[:5], W2, keep=3)


def test_coreset_option_errors():
    with pytest.raises(InvalidInputError, match="either keep"):
        coreset_prune(W1, b1, W2)
    with pytest.raises(InvalidInputError, match="either keep"):
        coreset_prune(W1, b1, W2, keep=3, epsilon=0.1, delta=0.1)
    with pytest.raises(InvalidInputError, match="need the calibration"):
        coreset_prune(W1, b1, W2, keep=3, variant="data-dependent")
    with pytest.raises(InvalidInputError, match="need the calibration"):
        coreset_prune(W1, b1, W2, keep=3, refit=True)
    with pytest.raises(InvalidInputError, match="variant"):
        coreset_prune(W1, b1, W2, keep=3, variant="magic")
    with pytest.raises(InvalidInputError, match="columns"):
        coreset_prune(W1, b1, W2, keep=3, A=A[:, :4], variant="data-dependent")
    with pytest.raises(InvalidInputError, match="rescale"):
        coreset_prune(W1, b1, W2, keep=3, deterministic=True, rescale="mass")
    with pytest.raises(InvalidInputError, match="rescale='row' needs"):
        coreset_prune(W1, b1, W2, keep=3, deterministic=True, rescale="row")
    with pytest.raises(InvalidInputError, match="sensitivity must be"):
        coreset_prune(W1, b1, W2, keep=3, sensitivity=np.ones(4))
    with pytest.raises(InvalidInputError, match="radius"):
        coreset_prune(W1, b1, W2, keep=3, radius=0)


def test_global_threshold_targets():
    with pytest.raises(InvalidInputError, match="exceeds"):
        global_threshold([W1, W2], target_params=10**6)
    with pytest.raises(InvalidInputError, match="keep 0 neurons"):
        global_threshold([W1, W2], target_params=2)
    with pytest.raises(InvalidInputError, match="outside"):
        global_threshold([W1, W2], target_fraction=0.0)
    with pytest.raises(InvalidInputError, match="either"):
        global_threshold([W1, W2])


def test_onthefly_and_registry_errors():
    with pytest.raises(InvalidInputError, match="rule"):
        onthefly_prune([W1], rule="cubic")
    with pytest.raises(InvalidInputError, match="k_first"):
        onthefly_prune([W1], rule="linear")
    with pytest.raises(InvalidInputError, match="error_budget"):
        onthefly_prune([W1], rule="bisect", grams=[np.eye(4)], error_budget=-1)
    with pytest.raises(InvalidInputError, match="needs multiple"):
        lt.solve_layer(W2, A, method="onthefly")
    with pytest.raises(InvalidInputError, match="pattern='layer'"):
        lt.solve_layer(W2, A, sparsity=0.5, pattern="row", method="coreset")
    with pytest.raises(InvalidInputError, match="needs the inputs X"):
        lt.solve_layer(W2, gram=A.T @ A, sparsity=0.5, method="coreset",
                       variant="data-dependent")
    with pytest.raises(InvalidInputError, match="does not divide"):
        to_bsr(W2, 4, pad_to=3)
    with pytest.raises(InvalidInputError, match="block must be"):
        lt.solve_layer(W2, A, sparsity=0.5, method="pivot", block=0)
