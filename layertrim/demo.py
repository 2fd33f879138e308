"""`make demo`: train an MNIST MLP, prune its first layer with every solver, then the whole
network, and print tables.

The 784-300-100-10 ReLU network trains in a few seconds on 2 cores. Its first layer is pruned
from the Gram of its real inputs (10,000 training images, streamed in batches), and each pruned
layer is put back into the network to measure test accuracy with no retraining. Then all three
layers are pruned with ``layertrim.prune_model`` (cascade, global allocation) next to
PyTorch's own global magnitude pruning.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import layertrim as lt
from layertrim.datasets import load_mnist
from layertrim.report import format_table

SPARSITIES = (0.5, 0.7, 0.9)
CALIBRATION = 10_000
# Net-Trim iterates on the layer's input rows, not on the Gram: 1024 sampled rows per layer
WHOLE_MODEL_METHODS = {"magnitude": {}, "sparsegpt": {}, "l0-admm": {},
                       "nettrim": {"max_samples": 1024}}


def train_mlp(X: np.ndarray, y: np.ndarray, *, epochs: int = 3, seed: int = 0):
    """784-300-100-10 ReLU MLP, Adam, batch 128."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    return fit(model, torch.from_numpy(X), torch.from_numpy(y), epochs=epochs, seed=seed)


def fit(model, X, y, *, epochs: int, seed: int = 0):
    """Train with Adam (lr 1e-3), batches of 128 drawn by a seeded shuffle; X, y tensors."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=gen).split(128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def lenet():
    """LeNet-5-like: two 5x5 convs with max-pooling, three linear layers (28 x 28 inputs)."""
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                         nn.Linear(84, 10))


def accuracy(model, X: np.ndarray, y: np.ndarray, W1=None, b1=None) -> float:
    """Test accuracy, with the first layer's weights optionally replaced."""
    import torch

    with torch.no_grad():
        layer = model[0]
        saved = layer.weight.clone(), layer.bias.clone()
        if W1 is not None:
            layer.weight.copy_(torch.from_numpy(W1))
            layer.bias.copy_(torch.from_numpy(b1))
        pred = model(torch.from_numpy(X)).argmax(1).numpy()
        layer.weight.copy_(saved[0])
        layer.bias.copy_(saved[1])
    return float((pred == y).mean())


def main() -> None:
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_mnist()
    (Xtr, ytr), (Xte, yte) = data["train"], data["test"]
    t = time.perf_counter()
    model = train_mlp(Xtr, ytr)
    dense_acc = accuracy(model, Xte, yte)
    print(f"trained 784-300-100-10 MLP on 50,000 MNIST images in {time.perf_counter() - t:.1f} s;"
          f" test accuracy {dense_acc:.4f}")

    W0 = model[0].weight.detach().numpy().astype(np.float64)
    b0 = model[0].bias.detach().numpy().astype(np.float64)
    gram = lt.Gram(784)
    for start in range(0, CALIBRATION, 1000):  # the first layer's real inputs, streamed
        gram.update(Xtr[start : start + 1000])
    print(f"calibration: {gram.n} inputs, Gram {gram.d}x{gram.d} (+ ones column for the bias)\n")

    rows = []
    runs: list[tuple[str, dict[str, Any]]] = [
        ("magnitude", {}), ("random", {}), ("wanda", {}), ("sparsegpt", {}),
        ("magnitude", {"refit": True}), ("sparsegpt", {"refit": True}),
        ("l0-admm", {}), ("slr", {}), ("iht", {}),
    ]
    for s in SPARSITIES:
        for method, opts in runs:
            r = lt.solve_layer(W0, gram=gram, bias=b0, sparsity=s, method=method, **opts)
            assert r.bias is not None
            acc = accuracy(model, Xte, yte, r.W.astype(np.float32), r.bias.astype(np.float32))
            rows.append((r.solver, f"{s:.0%}", f"{r.rel_error:.4f}", f"{r.wall_time * 1e3:.1f}",
                         f"{acc:.4f}", f"{acc - dense_acc:+.4f}"))
    print(format_table(
        ["method", "sparsity", "rel. error", "time [ms]", "test acc.", "vs dense"], rows,
        title=f"Layer 1 (300 x 784 + bias) of the MNIST MLP, dense test accuracy {dense_acc:.4f}",
    ))
    whole_model("MLP", model, Xtr, Xte, yte, dense_acc)
    t = time.perf_counter()
    cnn = train_cnn(Xtr, ytr)
    cnn_acc = _acc(cnn, Xte.reshape(-1, 1, 28, 28), yte)
    print(f"\ntrained a LeNet-5-like CNN for one epoch in {time.perf_counter() - t:.1f} s; "
          f"test accuracy {cnn_acc:.4f}")
    whole_model("CNN", cnn, Xtr.reshape(-1, 1, 28, 28), Xte.reshape(-1, 1, 28, 28), yte,
                cnn_acc)


def train_cnn(X: np.ndarray, y: np.ndarray, *, seed: int = 0):
    """``lenet()`` after one epoch of ``fit``."""
    import torch

    torch.manual_seed(seed)
    Xt = torch.from_numpy(X).reshape(-1, 1, 28, 28)
    return fit(lenet(), Xt, torch.from_numpy(y), epochs=1, seed=seed)


def whole_model(name: str, model, Xtr, Xte, yte, dense_acc: float) -> None:
    """Every layer at once: cascade schedule, global allocation, against PyTorch's own
    global magnitude pruning."""
    import copy

    import torch
    from torch.nn.utils import prune

    from layertrim.adapters.torch import find_layers

    calib = list(torch.from_numpy(Xtr[:2048]).split(256))
    rows, last = [], None
    for s in SPARSITIES:
        base = copy.deepcopy(model)
        params = [(la.module, "weight") for la in find_layers(base, quiet=True)]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=s)
        for mod, attr in params:
            prune.remove(mod, attr)
        rows.append(("torch global L1", f"{s:.0%}", "-", f"{_acc(base, Xte, yte):.4f}"))
        for method, options in WHOLE_MODEL_METHODS.items():
            m = copy.deepcopy(model)
            t = time.perf_counter()
            rep = lt.prune_model(m, calib, sparsity=s, method=method, schedule="cascade",
                                 executor="serial", **options)
            rows.append((f"layertrim {method}", f"{rep.sparsity:.0%}",
                         f"{time.perf_counter() - t:.1f}", f"{_acc(m, Xte, yte):.4f}"))
            last = rep if method == "l0-admm" else last
    print()
    print(format_table(["method", "sparsity", "time [s]", "test acc."], rows,
                       title=f"Whole {name}, cascade, global allocation (dense {dense_acc:.4f})"))
    print(f"\nthe last prune's report (l0-admm at {SPARSITIES[-1]:.0%}):\n{last}")


def _acc(model, X: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        return float((model(torch.from_numpy(X)).argmax(1).numpy() == y).mean())


if __name__ == "__main__":
    main()
