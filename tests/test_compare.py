"""`layertrim bench` / compare_methods: every cell recomputed independently from the weights
it returns, options routed to the methods that take them, failures reported per cell, bad
input refused before any work."""

import json

import numpy as np
import pytest

import layertrim as lt
from layertrim.cli import main
from layertrim.compare import compare_methods, route_options
from layertrim.errors import InvalidInputError

from .conftest import correlated_inputs


@pytest.fixture
def layer():
    rng = np.random.default_rng(3)
    X = correlated_inputs(300, 24, seed=4)
    return rng.standard_normal((10, 24)), X, 0.5 * rng.standard_normal(10)


def test_each_cell_is_the_solver_run_and_its_errors_recompute(layer):
    W, X, b = layer
    methods, levels = ["magnitude", "sparsegpt", "l0-admm"], [0.5, 0.8]
    rows = compare_methods(W, X, bias=b, methods=methods, sparsities=levels,
                           activation="relu", repeats=2)
    assert [(r.method, r.target) for r in rows] == [(m, s) for m in methods for s in levels]
    Xa = np.hstack([X, np.ones((len(X), 1))])
    Y0 = Xa @ np.hstack([W, b[:, None]]).T
    for r in rows:
        assert r.error is None and r.time_s > 0
        ref = lt.solve_layer(W, X, bias=b, sparsity=r.target, method=r.method,
                             activation="relu")
        assert r.sparsity == pytest.approx(ref.sparsity)
        Y = Xa @ np.hstack([ref.W, ref.bias[:, None]]).T
        assert r.rel_error == pytest.approx(np.sum((Y - Y0) ** 2) / np.sum(Y0**2), rel=1e-9)
        R0, R = np.maximum(Y0, 0), np.maximum(Y, 0)
        assert r.out_error == pytest.approx(np.sum((R - R0) ** 2) / np.sum(R0**2), rel=1e-9)
    base = {r.target: r for r in rows if r.method == "magnitude"}
    for r in rows:
        assert r.error_vs_baseline == pytest.approx(r.rel_error / base[r.target].rel_error)
        assert r.time_vs_baseline == pytest.approx(r.time_s / base[r.target].time_s)


def test_options_go_to_the_methods_that_take_them():
    routed = route_options(["magnitude", "sparsegpt", "l0-admm"], {"blocksize": 8})
    assert routed == {"magnitude": {}, "sparsegpt": {"blocksize": 8}, "l0-admm": {}}
    with pytest.raises(InvalidInputError, match="takes option 'blocksiz'"):
        route_options(["magnitude", "sparsegpt"], {"blocksiz": 8})


def test_a_method_that_cannot_run_here_is_a_failed_row(layer):
    W, X, b = layer
    Xa = np.hstack([X, np.ones((len(X), 1))])
    rows = compare_methods(W, gram=Xa.T @ Xa, bias=b, methods=["sparsegpt", "nettrim"],
                           sparsities=[0.5])
    assert rows[0].error is None
    assert rows[1].error is not None and "inputs X" in rows[1].error
    assert rows[1].rel_error is None and rows[1].error_vs_baseline is None


@pytest.mark.parametrize("kw,msg", [
    ({"sparsities": [1.0]}, "sparsity must be in"),
    ({"sparsities": []}, "at least one sparsity"),
    ({"methods": ["nope"]}, "unknown method 'nope'"),
    ({"methods": []}, "at least one method"),
    ({"baseline": "wanda"}, "baseline 'wanda' is not among"),
    ({"repeats": 0}, "repeats"),
    ({"pattern": "3:4"}, "sparsity"),
])
def test_bad_input_is_refused_before_any_work(layer, kw, msg):
    W, X, b = layer
    args = {"methods": ["magnitude"], "sparsities": [0.5], **kw}
    with pytest.raises(InvalidInputError, match=msg):
        compare_methods(W, X, bias=b, **args)


def test_the_cli_writes_json_and_plot_and_says_which_cells_failed(layer, tmp_path, capsys):
    W, X, b = layer
    path = tmp_path / "layer.npz"
    np.savez(path, W=W, X=X, b=b)
    js, png = tmp_path / "bench.json", tmp_path / "bench.png"
    rc = main(["bench", str(path), "--methods", "magnitude,sparsegpt", "--sparsity", "0.5,0.9",
               "--option", "blocksize=8", "--json", str(js), "--plot", str(png)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "err / magnitude" in out and "sparsegpt" in out
    doc = json.loads(js.read_text())
    assert doc["baseline"] == "magnitude" and len(doc["rows"]) == 4
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a Gram-only file: Net-Trim cannot run; the table says so and the exit status is 1
    Xa = np.hstack([X, np.ones((len(X), 1))])
    gram = tmp_path / "gram.npz"
    np.savez(gram, W=W, H=Xa.T @ Xa, b=b)
    assert main(["bench", str(gram), "--methods", "magnitude,nettrim", "--sparsity", "0.5"]) == 1
    assert "nettrim at 0.5 failed: Net-Trim needs the calibration inputs X" in \
        capsys.readouterr().out
    # the error after a ReLU needs X: refused on a Gram-only file rather than left out
    assert main(["bench", str(gram), "--methods", "magnitude", "--activation", "relu"]) == 2
    assert "needs the inputs X" in capsys.readouterr().err


def test_cli_nm_pattern_benches_the_sparsity_it_fixes(layer, tmp_path):
    W, X, b = layer
    path, out = tmp_path / "layer.npz", tmp_path / "nm.json"
    np.savez(path, W=W, X=X, b=b)
    assert main(["bench", str(path), "--methods", "magnitude,wanda", "--pattern", "2:4",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["target"] for r in rows] == [0.5, 0.5]
    assert all(r["sparsity"] == 0.5 for r in rows)
    assert main(["bench", str(path), "--methods", "magnitude", "--pattern", "1:4"]) == 0


@pytest.mark.parametrize("flags,msg", [
    (["--sparsity", "0.5,abc"], "'abc' is not a number"),
    (["--sparsity", "1.2"], "sparsity must be in"),
    (["--methods", "magnitude,bogus"], "unknown method 'bogus'"),
    (["--option", "nothing=1"], "takes option 'nothing'"),
    (["--json", "SELF"], "overwrite the input"),
])
def test_cli_bad_input_exits_2(layer, tmp_path, capsys, flags, msg):
    W, X, b = layer
    path = tmp_path / "layer.npz"
    np.savez(path, W=W, X=X, b=b)
    flags = [str(path) if f == "SELF" else f for f in flags]
    assert main(["bench", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert np.array_equal(np.load(path)["W"], W)  # the input is untouched


def test_a_cell_that_raises_anything_is_a_failed_row_and_net_trim_rows_run(layer, tmp_path):
    """A solver's unexpected exception (an ArithmeticError, injected once: the warm-up takes
    a 4-row slice, so the first 10-row cell raises) fails its own cell only; Net-Trim gets the
    sparsity as its target and lands within 1%."""
    from . import faulty_solvers  # noqa: F401 -- registers test-raise-once

    W, X, b = layer
    rows = compare_methods(W, X, bias=b, methods=["magnitude", "test-raise-once", "nettrim"],
                           sparsities=[0.0, 0.6], activation="relu",
                           options={"marker": str(tmp_path / "raised"), "m": 10})
    by = {(r.method, r.target): r for r in rows}
    assert by[("test-raise-once", 0.0)].error.startswith("ArithmeticError: injected")
    assert by[("test-raise-once", 0.6)].error is None  # raised once: the next cell runs
    assert by[("magnitude", 0.6)].error is None
    nt = by[("nettrim", 0.6)]
    assert nt.error is None and abs(nt.sparsity - 0.6) <= 0.01 + 1e-12
    assert by[("nettrim", 0.0)].sparsity == 0.0 and by[("nettrim", 0.0)].rel_error == 0.0
