"""Global sparsity allocation: the dynamic program against brute force, OWL's rule, and the
allocations inside prune_model."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import layertrim as lt
from layertrim.adapters.torch import find_layers
from layertrim.errors import InvalidInputError
from layertrim.layerwise.allocate import global_allocation, owl_allocation, trim_overshoot


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_program_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    grid = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 0.9])
    L = 4
    sizes = rng.choice([10, 20, 50, 100], size=L)  # grid * size is a whole number of weights
    curves = np.sort(rng.random((L, len(grid))), axis=1) * rng.random((L, 1)) * 3
    curves[:, 0] = 0
    target = float(rng.choice([0.3, 0.5, 0.7]))
    got = global_allocation(curves, sizes, target, grid=grid, bins=int(sizes.sum()))
    best, best_s = np.inf, None
    for ks in itertools.product(range(len(grid)), repeat=L):
        s = grid[list(ks)]
        if np.sum(s * sizes) >= target * sizes.sum() - 1e-9:
            c = curves[np.arange(L), list(ks)].sum()
            if c < best - 1e-12:
                best, best_s = c, s
    idx = [list(grid).index(v) for v in got]
    assert curves[np.arange(L), idx].sum() == pytest.approx(best)
    assert np.sum(got * sizes) >= target * sizes.sum() - 1e-9
    assert best_s is not None


def test_trim_overshoot_hits_the_target_exactly():
    grid = np.array([0.0, 0.25, 0.5, 0.75, 0.9])
    sizes = np.array([400, 100, 1000])
    curves = np.array([[0, 0.1, 0.3, 0.6, 1.0], [0, 0.01, 0.02, 0.05, 0.3],
                       [0, 0.05, 0.1, 0.2, 0.5]])
    s = global_allocation(curves, sizes, 0.6, grid=grid, bins=1500)
    t = trim_overshoot(s, curves, sizes, 0.6, grid=grid)
    assert abs(np.sum(t * sizes) - 0.6 * sizes.sum()) <= 0.5
    assert np.all(t <= s + 1e-12)
    lower = np.array([grid[max(list(grid).index(v) - 1, 0)] for v in s])
    assert np.all(t >= lower - 1e-12)


def test_owl_hits_the_target_and_spares_outlier_layers():
    rng = np.random.default_rng(0)
    plain = np.abs(rng.standard_normal((50, 40)))
    spiky = plain.copy()
    spiky[rng.random(spiky.shape) < 0.05] *= 30  # many outliers
    s = owl_allocation([plain, spiky, plain], 0.7)
    assert np.average(s, weights=[2000, 2000, 2000]) == pytest.approx(0.7)
    assert s[1] < s[0] and s[0] == pytest.approx(s[2])
    with pytest.raises(InvalidInputError, match="global sparsity"):
        owl_allocation([plain], 1.0)


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(6 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))


@pytest.mark.parametrize("allocation", ["global", "owl"])
def test_prune_model_spreads_a_global_budget(allocation):
    model = cnn()
    data = [torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(i))
            for i in range(2)]
    report = lt.prune_model(model, data, sparsity=0.8, method="sparsegpt", schedule="parallel",
                            executor="serial", allocation=allocation)
    total = sum(la.module.weight.numel() for la in find_layers(model))
    zeros = sum(int((la.module.weight == 0).sum()) for la in find_layers(model))
    assert abs(zeros / total - 0.8) <= 0.01  # the grid's overshoot is trimmed
    assert report.sparsity == pytest.approx(zeros / total)
    assert set(report.allocation) == {"0", "3", "5"}
    if allocation == "global":  # 9 weights per filter: the small conv is pruned least
        assert report.allocation["0"] < report.allocation["3"]


def test_unknown_allocation_is_refused():
    with pytest.raises(InvalidInputError, match="allocation"):
        lt.prune_model(cnn(), [torch.randn(4, 1, 8, 8)], sparsity=0.5, allocation="magic",
                       executor="serial")
