"""The layertrim command line, run as a real subprocess."""

import os
import subprocess
import sys

import numpy as np
import pytest

from .conftest import correlated_inputs


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "layertrim", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture
def layer_file(tmp_path):
    rng = np.random.default_rng(0)
    X = correlated_inputs(300, 16, seed=0).astype(np.float32)
    W = rng.standard_normal((8, 16)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    path = tmp_path / "layer.npz"
    np.savez(path, W=W, X=X, b=b)
    return path, W, X, b


def test_solve_writes_w_and_mask_and_prints_a_report(layer_file, tmp_path):
    path, W, X, b = layer_file
    out = tmp_path / "pruned.npz"
    r = cli("solve", path, "--method", "sparsegpt", "--sparsity", "0.5", "--pattern", "2:4",
            "--refit", "--out", out)
    assert r.returncode == 0, r.stderr
    for word in ("sparsegpt+refit", "relative error", "0.5000", "time"):
        assert word in r.stdout
    with np.load(out) as f:
        assert f["W"].shape == W.shape and f["W"].dtype == np.float32
        mask = f["mask"]
        assert mask.dtype == bool and mask.sum() == W.size // 2
        assert np.all(f["W"][~mask] == 0)
        assert f["b"].shape == b.shape
        assert 0 < float(f["rel_error"]) < 1
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_solve_from_a_gram_file(tmp_path, layer_file):
    _, W, X, _ = layer_file
    path = tmp_path / "gram_layer.npz"
    np.savez(path, W=W, H=X.astype(np.float64).T @ X)
    r = cli("solve", path, "--method", "wanda", "--nnz", "64", "--pattern", "row")
    assert r.returncode == 0, r.stderr
    assert "64 of 128" in r.stdout


def test_methods_lists_the_solvers():
    r = cli("methods")
    assert r.returncode == 0
    for name in ("magnitude", "random", "wanda", "sparsegpt"):
        assert name in r.stdout


def _assert_clean_error(r, *words):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr


def test_cli_bad_inputs_exit_2_with_a_message(tmp_path, layer_file):
    path, W, X, b = layer_file
    _assert_clean_error(cli("solve", path, "--sparsity", "1.2"), "outside [0, 1)")
    _assert_clean_error(cli("solve", path, "--sparsity", "0.5", "--method", "nope"),
                        "unknown method 'nope'")
    _assert_clean_error(cli("solve", path, "--pattern", "3:5"), "does not divide")
    _assert_clean_error(cli("solve", tmp_path / "missing.npz", "--sparsity", "0.5"),
                        "no such file")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive")
    _assert_clean_error(cli("solve", junk, "--sparsity", "0.5"), "cannot read", "junk.npz")
    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, X=X)
    _assert_clean_error(cli("solve", nokey, "--sparsity", "0.5"), "missing key 'W'")
    nodata = tmp_path / "nodata.npz"
    np.savez(nodata, W=W)
    _assert_clean_error(cli("solve", nodata, "--sparsity", "0.5"), "missing key 'X' or 'H'")
    mismatch = tmp_path / "mismatch.npz"
    np.savez(mismatch, W=W, X=X[:, :5])
    _assert_clean_error(cli("solve", mismatch, "--sparsity", "0.5"), "shape mismatch")
    nan = tmp_path / "nan.npz"
    Xn = X.copy()
    Xn[3, 3] = np.nan
    np.savez(nan, W=W, X=Xn)
    _assert_clean_error(cli("solve", nan, "--sparsity", "0.5"), "X contains NaN or Inf")


def test_output_never_replaces_the_input(layer_file):
    path, *_ = layer_file
    before = path.read_bytes()
    r = cli("solve", path, "--sparsity", "0.5", "--out", path)
    _assert_clean_error(r, "refusing to overwrite the input")
    assert path.read_bytes() == before
    # the same file through another spelling of its path
    r = cli("solve", path, "--sparsity", "0.5", "--out", f"{path.parent}/./{path.name}")
    _assert_clean_error(r, "refusing to overwrite the input")
    assert path.read_bytes() == before


def test_failed_write_leaves_no_partial_file(layer_file, tmp_path):
    path, *_ = layer_file
    r = cli("solve", path, "--sparsity", "0.5", "--out", tmp_path / "no_such_dir" / "o.npz")
    _assert_clean_error(r, "does not exist")
    assert not (tmp_path / "no_such_dir").exists()


def test_integer_weights_are_written_as_float_and_files_follow_the_umask(tmp_path):
    rng = np.random.default_rng(1)
    W = rng.integers(-100, 100, size=(4, 8)).astype(np.int8)
    X = rng.standard_normal((50, 8))
    path, out = tmp_path / "int.npz", tmp_path / "int_out.npz"
    np.savez(path, W=W, X=X)
    r = cli("solve", path, "--sparsity", "0.5", "--out", out)
    assert r.returncode == 0, r.stderr
    with np.load(out) as f:
        assert f["W"].dtype == np.float64
    umask = os.umask(0)
    os.umask(umask)
    assert (out.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_all_pruned_row_with_refit_from_the_cli(tmp_path):
    rng = np.random.default_rng(2)
    W = rng.standard_normal((4, 8))
    W[0] *= 1e-3  # magnitude pruning empties this row
    path = tmp_path / "deadrow.npz"
    np.savez(path, W=W, X=rng.standard_normal((50, 8)))
    r = cli("solve", path, "--sparsity", "0.7", "--method", "magnitude", "--refit")
    assert r.returncode == 0, r.stderr


def test_l0_solver_with_options_from_the_cli(layer_file, tmp_path):
    path, W, X, b = layer_file
    out = tmp_path / "l0.npz"
    r = cli("solve", path, "--method", "l0-admm", "--sparsity", "0.75", "--option", "rho=0.2",
            "--option", "max_iter=50", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "l0-admm" in r.stdout
    with np.load(out) as f:
        assert f["mask"].sum() == W.size // 4
    _assert_clean_error(cli("solve", path, "--method", "l0-admm", "--sparsity", "0.5",
                            "--option", "rho"), "KEY=VALUE")
    _assert_clean_error(cli("solve", path, "--method", "l0-admm", "--sparsity", "0.5",
                            "--option", "bogus=1"), "no option(s) ['bogus']")
    _assert_clean_error(cli("solve", path, "--method", "l0-general", "--sparsity", "0.5",
                            "--activation", "other"), "derivative")


@pytest.mark.parametrize("method", ["nettrim-cvx", "nettrim"])
def test_nettrim_needs_no_sparsity_target(layer_file, tmp_path, method):
    path, W, X, b = layer_file
    out = tmp_path / "nt.npz"
    r = cli("solve", path, "--method", method, "--activation", "relu",
            "--option", "gain=0.1", "--out", out)
    assert r.returncode == 0, r.stderr
    with np.load(out) as f:
        assert 0 < f["mask"].sum() < W.size
    _assert_clean_error(cli("solve", path, "--method", "sparsegpt"), "missing sparsity target")


def test_solve_options_that_its_own_flags_set_are_refused(layer_file, tmp_path):
    """--option refit=False collided with solve's own refit: a TypeError traceback, exit 1."""
    path, *_ = layer_file
    for opt in ("refit=False", "activation='tanh'", "sparsity=0.5"):
        r = cli("solve", path, "--method", "l0-admm", "--sparsity", "0.5", "--option", opt)
        _assert_clean_error(r, "is set by solve's own flags")
