"""Baseline solvers: exact counts, pattern validity, ordering of quality, OBS exactness."""

import numpy as np
import pytest

import layertrim as lt
from layertrim import LayerProblem, refit
from layertrim.solvers import run
from layertrim.solvers.masks import is_valid_mask

from .conftest import correlated_inputs

SOLVERS = ["magnitude", "random", "wanda", "sparsegpt"]
PATTERNS = ["layer", "row", "2:4", "4:8", "1:4"]


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_nonzero_count_and_valid_pattern(layer, method, pattern, with_bias):
    W, X, b = layer
    n_m = pattern not in ("layer", "row")
    kwargs = {} if n_m else {"sparsity": 0.63}
    r = lt.solve_layer(W, X, bias=b if with_bias else None, method=method, pattern=pattern,
                       **kwargs)
    P = LayerProblem.create(W, X, pattern=pattern, **kwargs)
    assert is_valid_mask(r.mask, P.pattern, P.nnz)
    assert r.nnz == P.nnz == int(r.mask.sum())
    assert np.count_nonzero(r.W) <= P.nnz
    assert np.all(r.W[~r.mask] == 0)
    assert r.sparsity == pytest.approx(1 - P.nnz / W.size)
    assert (r.bias is not None) == with_bias
    # the error reported from H equals the error measured on X itself
    Xa = np.hstack([X, np.ones((len(X), 1))]) if with_bias else X
    Wa = np.hstack([r.W, r.bias[:, None]]) if with_bias else r.W
    W0a = np.hstack([W, b[:, None]]) if with_bias else W
    direct = np.linalg.norm(Xa @ (Wa - W0a).T) ** 2 / np.linalg.norm(Xa @ W0a.T) ** 2
    assert r.rel_error == pytest.approx(direct, rel=1e-9)


@pytest.mark.parametrize("nnz", [1, 7, 12 * 32])
def test_layer_count_given_as_nnz(layer, nnz):
    W, X, _ = layer
    for method in SOLVERS:
        r = lt.solve_layer(W, X, nnz=nnz, method=method)
        assert r.nnz == nnz


def test_sparsity_zero_keeps_the_layer(layer):
    W, X, b = layer
    for method in SOLVERS:
        r = lt.solve_layer(W, X, bias=b, sparsity=0.0, method=method)
        assert r.rel_error < 1e-20
        np.testing.assert_allclose(r.W, W, atol=1e-10)


def test_quality_order_on_correlated_inputs():
    """sparsegpt < wanda <= magnitude in relative error, on average over seeds."""
    errs = {m: [] for m in ("magnitude", "wanda", "sparsegpt")}
    for seed in range(5):
        X = correlated_inputs(400, 96, seed=seed)
        W = np.random.default_rng(100 + seed).standard_normal((48, 96))
        for method in errs:
            errs[method].append(lt.solve_layer(W, X, sparsity=0.7, method=method).rel_error)
    mean = {k: np.mean(v) for k, v in errs.items()}
    assert mean["sparsegpt"] < mean["wanda"] <= mean["magnitude"], mean


def test_sparsegpt_is_exact_obs_when_only_the_first_column_is_pruned():
    """Pruning column 0 and compensating every later column is the exact optimum on that mask."""
    rng = np.random.default_rng(7)
    X = correlated_inputs(300, 12, seed=8)
    W = rng.standard_normal((6, 12)) + 3.0
    W[:, 0] = 1e-3 * rng.standard_normal(6)
    P = LayerProblem.create(W, X, nnz=6 * 11, pattern="row")
    r = run(P, "sparsegpt", damp=0.01)
    assert not r.mask[:, 0].any() and r.mask[:, 1:].all()
    exact = refit(P, r.mask, damp=0.01)
    np.testing.assert_allclose(r.W, exact.W, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("blocksize", [1, 5, 128])
def test_sparsegpt_blocking_does_not_change_a_fixed_mask_sweep(blocksize):
    """Lazy blocked updates are an exact reordering of the same arithmetic (N:M masks are
    chosen per group, independent of the block size)."""
    X = correlated_inputs(200, 24, seed=3)
    W = np.random.default_rng(4).standard_normal((8, 24))
    ref = lt.solve_layer(W, X, pattern="2:4", method="sparsegpt", blocksize=4)
    r = lt.solve_layer(W, X, pattern="2:4", method="sparsegpt", blocksize=blocksize)
    np.testing.assert_array_equal(r.mask, ref.mask)
    np.testing.assert_allclose(r.W, ref.W, rtol=1e-9, atol=1e-12)


def test_sparsegpt_bias_compensation_helps_with_nonzero_mean_inputs():
    X = correlated_inputs(300, 40, seed=2) + 2.0
    rng = np.random.default_rng(9)
    W, b = rng.standard_normal((10, 40)), rng.standard_normal(10)
    r = lt.solve_layer(W, X, bias=b, sparsity=0.8, method="sparsegpt")
    assert not np.allclose(r.bias, b)
    kept_bias = LayerProblem.create(W, X, bias=b, sparsity=0.8).objective(
        np.hstack([r.W, b[:, None]]))
    assert r.objective < kept_bias


def test_random_is_seeded(layer):
    W, X, _ = layer
    a = lt.solve_layer(W, X, sparsity=0.5, method="random", seed=1)
    b = lt.solve_layer(W, X, sparsity=0.5, method="random", seed=1)
    c = lt.solve_layer(W, X, sparsity=0.5, method="random", seed=2)
    assert np.array_equal(a.mask, b.mask) and not np.array_equal(a.mask, c.mask)


def test_gram_and_x_give_the_same_result(layer):
    W, X, b = layer
    g = lt.Gram.from_data(X, batch_size=17)
    for method in SOLVERS:
        r1 = lt.solve_layer(W, X, bias=b, sparsity=0.5, method=method)
        r2 = lt.solve_layer(W, gram=g, bias=b, sparsity=0.5, method=method)
        np.testing.assert_allclose(r1.W, r2.W, rtol=1e-9, atol=1e-12)


def test_refit_option_never_hurts(layer):
    W, X, b = layer
    for method in SOLVERS:
        plain = lt.solve_layer(W, X, bias=b, sparsity=0.6, method=method)
        fitted = lt.solve_layer(W, X, bias=b, sparsity=0.6, method=method, refit=True)
        assert fitted.solver == f"{method}+refit"
        assert np.array_equal(plain.mask, fitted.mask)
        assert fitted.objective <= plain.objective * (1 + 1e-9)


def test_methods_lists_every_baseline_with_a_description():
    listed = lt.methods()
    for name in SOLVERS:
        assert name in listed and len(listed[name]) > 10


def test_sparsegpt_damping_is_relative_to_the_real_inputs_not_the_bias_entry():
    X = 1e-3 * correlated_inputs(2000, 32, seed=1)
    rng = np.random.default_rng(0)
    W, b = rng.standard_normal((8, 32)), rng.standard_normal(8)
    r = lt.solve_layer(W, X, bias=b, sparsity=0.5, method="sparsegpt", damp=0.01)
    assert r.settings["lambda"] == pytest.approx(0.01 * np.mean(np.sum(X**2, axis=0)))


def _numpy_block_sweep(W1, U1, mask1, Err1, start, stop):
    """The column loop SparseGPT's compiled block sweep replaced, as it was written."""
    for i in range(start, stop):
        err = np.where(mask1[:, i], 0.0, W1[:, i]) / U1[i, i]
        W1[:, i:] -= np.outer(err, U1[i, i:])
        W1[:, i] = np.where(mask1[:, i], W1[:, i], 0.0)
        Err1[:, i] = err


@pytest.mark.parametrize("seed,start,stop", [(0, 0, 13), (1, 0, 13), (2, 0, 13), (3, 4, 8)])
def test_sparsegpt_compiled_block_sweep_is_bitwise_the_numpy_loop(seed, start, stop):
    """The whole block (layer and row patterns) and one N:M group's columns of it."""
    from layertrim.solvers.sparsegpt import _sweep_block

    rng = np.random.default_rng(seed)
    m, B = 7 + seed, 13
    A = rng.standard_normal((B, 3 * B))
    U = np.linalg.cholesky(np.linalg.inv(A @ A.T + np.eye(B))).T  # upper, positive diagonal
    W = rng.standard_normal((m, B))
    mask = rng.random((m, B)) < 0.4
    got, want = W.copy(), W.copy()
    e_got, e_want = np.zeros_like(W), np.zeros_like(W)
    _sweep_block(got, np.ascontiguousarray(U), mask, e_got, start, stop)
    _numpy_block_sweep(want, U, mask, e_want, start, stop)
    assert np.array_equal(got, want) and np.array_equal(e_got, e_want)


@pytest.mark.parametrize("method", ["sparsegpt", "magnitude", "wanda"])
def test_error_curves_equal_one_solve_per_level(method, layer):
    """The allocation's curves share the problem (and sparsegpt's factor) across levels; every
    entry is still bitwise the rel_error of solve_layer at that level."""
    from layertrim.gram import Gram
    from layertrim.layerwise.allocate import error_curves

    W, X, b = layer
    g = Gram.from_data(X)
    grid = (0.0, 0.3, 0.5, 0.9, 0.99)
    got = error_curves([(W, b, g)], grid=grid, method=method)[0]
    for s, e in zip(grid, got, strict=True):
        want = 0.0 if s == 0 else lt.solve_layer(W, gram=g, bias=b, sparsity=s,
                                                  method=method).rel_error
        assert e == want


def test_small_layers_solve_on_one_blas_thread_and_restore_it():
    """A small layer's solve limits numpy's and scipy's BLAS to one thread (through a cached
    controller, not a library scan per call) and gives the previous count back, also inside a
    worker that set its own limit."""
    import threadpoolctl

    from layertrim.solvers.registry import _blas_threads

    def counts():  # numpy's and scipy's OpenBLAS: what the solvers multiply with
        return {i["num_threads"] for i in threadpoolctl.threadpool_info()
                if "scipy_openblas" in i["filepath"]}

    small = LayerProblem.create(np.ones((3, 4)), np.random.default_rng(0).random((10, 4)),
                                sparsity=0.5)
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        with _blas_threads(small):
            assert counts() == {1}
        assert counts() == {2}
