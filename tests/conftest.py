import numpy as np
import pytest
from hypothesis import settings

# CI machines are shared and slow to warm up: judge properties, not per-example latency
settings.register_profile("layertrim", deadline=None, derandomize=True)
settings.load_profile("layertrim")


def correlated_inputs(n: int, d: int, seed: int, rho: float = 0.8) -> np.ndarray:
    """AR(1)-correlated features with unequal scales, like real activations."""
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((n, d))
    X = np.empty_like(Z)
    X[:, 0] = Z[:, 0]
    for j in range(1, d):
        X[:, j] = rho * X[:, j - 1] + np.sqrt(1 - rho**2) * Z[:, j]
    return X * np.exp(0.5 * rng.standard_normal(d))


@pytest.fixture
def layer():
    rng = np.random.default_rng(0)
    d, m = 32, 12
    X = correlated_inputs(200, d, seed=1)
    W = rng.standard_normal((m, d))
    b = rng.standard_normal(m)
    return W, X, b
