"""The bundled data and the demo's pieces on real MNIST (no download)."""

import subprocess
import sys

import numpy as np
import pytest

import layertrim as lt
from layertrim.datasets import load_mnist


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_mnist_is_the_full_set(mnist):
    sizes = {k: (v[0].shape, v[1].shape) for k, v in mnist.items()}
    assert sizes == {"train": ((50000, 784), (50000,)), "valid": ((10000, 784), (10000,)),
                     "test": ((10000, 784), (10000,))}
    X, y = mnist["train"]
    assert X.dtype == np.float32 and 0 <= X.min() and X.max() < 1
    assert set(np.unique(y)) == set(range(10))


def test_pruning_a_trained_first_layer_keeps_accuracy(mnist):
    """Train the demo MLP briefly; on layer 1's real inputs, sparsegpt beats magnitude in
    reconstruction error, and at 70% it costs under one point of test accuracy."""
    pytest.importorskip("torch")
    from layertrim.demo import accuracy, train_mlp

    (Xtr, ytr), (Xte, yte) = mnist["train"], mnist["test"]
    model = train_mlp(Xtr[:20000], ytr[:20000], epochs=1)
    dense = accuracy(model, Xte, yte)
    assert dense > 0.9
    gram = lt.Gram.from_data(Xtr[:5000])
    W0 = model[0].weight.detach().numpy().astype(np.float64)
    b0 = model[0].bias.detach().numpy().astype(np.float64)
    accs, errs = {}, {}
    for method in ("magnitude", "sparsegpt"):
        r = lt.solve_layer(W0, gram=gram, bias=b0, sparsity=0.7, method=method)
        errs[method] = r.rel_error
        accs[method] = accuracy(model, Xte, yte, r.W.astype(np.float32),
                                r.bias.astype(np.float32))
    assert errs["sparsegpt"] < 0.5 * errs["magnitude"]
    assert accs["sparsegpt"] > dense - 0.01


@pytest.mark.slow
def test_demo_runs_end_to_end():
    r = subprocess.run([sys.executable, "-m", "layertrim.demo"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert "sparsegpt+refit" in r.stdout and "90%" in r.stdout
    assert "Whole MLP" in r.stdout and "Whole CNN" in r.stdout and "torch global L1" in r.stdout
