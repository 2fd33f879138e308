"""Whole-model pruning with the per-sample solvers (Net-Trim): sampled layer inputs, ReLU
detection, the parallel and cascade rules, sparsity targets and the authors' gain rule."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import layertrim as lt
from layertrim.adapters.torch import collect_grams, find_layers
from layertrim.adapters.torch_samples import collect_samples, relu_layers
from layertrim.errors import InvalidInputError
from layertrim.solvers.nettrim_rules import cascade_rule


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(inplace=True),
                         nn.Linear(8, 3)).double().eval()


def calib(n=4, b=64, d=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(n)]


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.bn = nn.BatchNorm1d(5)
        self.b = nn.Linear(5, 2)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.b(self.relu(self.bn(F.relu(self.a(x)))))


def test_relu_detection_follows_the_tensors():
    net = mlp()
    assert relu_layers(net, find_layers(net), calib()[0]) == {"0", "2"}
    f = Functional().eval()  # F.relu counts as much as a module; b's output is returned
    assert relu_layers(f, find_layers(f), torch.randn(3, 4)) == {"a"}


class Skip(nn.Module):  # a's output feeds a ReLU *and* the skip connection
    def __init__(self):
        super().__init__()
        self.a, self.b, self.relu = nn.Linear(6, 6), nn.Linear(6, 6), nn.ReLU()

    def forward(self, x):
        h = self.a(x)
        return self.b(self.relu(h)) + h


class AddInPlace(nn.Module):  # the ReLU reads h + 1, not a's output
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        h.add_(1.0)
        return self.b(torch.relu(h))


class ReluInPlaceThenReuse(nn.Module):  # after an in-place ReLU every reader sees ReLU values
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        F.relu(h, inplace=True)
        return self.b(h) + h.sum()


@pytest.mark.parametrize("net,want", [
    (Skip(), set()),
    (AddInPlace(), set()),
    (ReluInPlaceThenReuse(), {"a"}),
    (nn.Sequential(nn.Linear(6, 6), nn.Dropout(0.2), nn.ReLU(), nn.Linear(6, 2)), {"0"}),
    (nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6)), {"0"}),  # the last: returned
])
def test_only_outputs_read_by_relus_alone_are_relu_layers(net, want):
    net = net.eval()
    assert relu_layers(net, find_layers(net), torch.randn(5, 6)) == want


def test_samples_hold_the_real_rows():
    """With room for every row, the sample is the calibration set itself (its Gram equals the
    streamed Gram); with less, the kept rows are real rows, paired with the reference's."""
    net, data = mlp(), calib()
    layers = find_layers(net)
    full = collect_samples(net, layers, data, max_samples=10_000)
    grams = collect_grams(net, layers, data)
    for la in layers:
        X, X0 = full[la.name][0]
        assert X0 is None and X.shape == (256, la.d)
        np.testing.assert_allclose(X.T @ X, grams[la.name][0].H, rtol=1e-12, atol=1e-12)
    few = collect_samples(net, layers, data, max_samples=50, seed=3, reference=copy.deepcopy(net))
    X, X0 = few["0"][0]
    assert X.shape == (50, 12)
    np.testing.assert_array_equal(X, X0)  # same network: the pairs are identical rows
    allrows = torch.cat(data).numpy()
    assert all(np.any(np.all(allrows == r, axis=1)) for r in X)
    assert len({r.tobytes() for r in X}) == 50  # without replacement
    again = collect_samples(net, layers, data, max_samples=50, seed=3)
    np.testing.assert_array_equal(again["0"][0][0], X)  # seeded
    with pytest.raises(InvalidInputError, match="max_samples"):
        collect_samples(net, layers, data, max_samples=0)


def test_parallel_nettrim_equals_per_layer_solves():
    """Parallel: each layer is the plain Net-Trim program on its own sampled inputs."""
    net, data = mlp(), calib()
    layers = find_layers(net)
    samples = collect_samples(net, layers, data, max_samples=200)
    dense = {la.name: (la.weight(), la.bias()) for la in layers}
    rep = lt.prune_model(net, data, sparsity=0.6, method="nettrim", schedule="parallel",
                         allocation="uniform", executor="serial", max_samples=200)
    for la, act in zip(layers, ("relu", "relu", "linear"), strict=True):
        W, b = dense[la.name]
        r = lt.solve_layer(W, samples[la.name][0][0], bias=b, method="nettrim",
                           activation=act, target_sparsity=0.6)
        np.testing.assert_allclose(la.weight(), r.W, atol=1e-12)
        assert abs(r.sparsity - 0.6) <= max(0.01, 1.0 / W.size)  # +-1%, or one weight
    assert [r.status for r in rep.layers] == ["solved"] * 3


def band_in_a_jump(cert: dict, target: float, tol: float = 0.01) -> bool:
    """The +-tol band was missed because the optimum's pruned fraction jumps over it: accurate
    solves on both sides of the band at gains within 0.1% of each other (at a breakpoint of
    the l1 path, several weights reach zero at once), and the certificate says so."""
    acc = [s for s in cert["bisection"] if s["accurate"]]
    lo = [s["gain"] for s in acc if s["sparsity"] < target - tol]
    hi = [s["gain"] for s in acc if s["sparsity"] > target + tol]
    return (cert["target_met"] is False and bool(lo) and bool(hi)
            and 0 < min(hi) - max(lo) <= 1e-3 * max(lo))


def test_cascade_nettrim_keeps_the_cascade_constraints():
    """Cascade: the second layer sees the pruned first layer's outputs; its weights satisfy
    the cascade rule's constraints off Omega, and its radius is at least the rule's."""
    net, data = mlp(), calib()
    ref = copy.deepcopy(net)
    rep = lt.prune_model(net, data, sparsity=0.5, method="nettrim", schedule="cascade",
                         allocation="uniform", executor="serial", max_samples=10_000)
    # a layer off its +-1% band (or one weight) says so in its status
    for r in rep.layers:
        off = abs(r.sparsity - 0.5) > max(0.01, 1 / (r.m * r.d)) + 1e-12
        assert r.status == ("target_missed" if off else "solved"), (r.name, r.sparsity)
    # the first layer hits its target; later ones may come out sparser, never denser: the
    # cascade rule's radius is their floor (this random net's first layer errs a lot)
    # (the first layer's cascade program is its own program on the dense inputs)
    r0 = lt.solve_layer(ref[0].weight.detach().double().numpy(), torch.cat(data).double().numpy(),
                        bias=ref[0].bias.detach().double().numpy(), method="nettrim",
                        activation="relu", target_sparsity=0.5)
    np.testing.assert_allclose(net[0].weight.detach().double().numpy(), r0.W, atol=1e-6)
    assert abs(rep.layers[0].sparsity - 0.5) <= 0.01 or band_in_a_jump(r0.certificate, 0.5)
    assert all(r.sparsity >= 0.5 - max(0.01, 1.0 / (r.m * r.d)) for r in rep.layers[1:])
    x = torch.cat(data)
    with torch.no_grad():
        X_hat = torch.relu(net[0](x)).numpy()
        X = torch.relu(ref[0](x)).numpy()
    W0a = np.hstack([ref[2].weight.detach().numpy(), ref[2].bias.detach().numpy()[:, None]])
    ones = np.ones((len(x), 1))
    Y = np.maximum(np.hstack([X, ones]) @ W0a.T, 0)
    t = cascade_rule(np.hstack([X_hat, ones]), W0a, Y, relu=True)
    Wa = np.hstack([net[2].weight.detach().numpy(), net[2].bias.detach().numpy()[:, None]])
    Z = np.hstack([X_hat, ones]) @ Wa.T
    assert np.max((Z - t.V)[~t.omega]) <= 1e-4 * np.abs(Y).max()
    # and the pruned network tracks the dense one better than a parallel prune does
    par = copy.deepcopy(ref)
    lt.prune_model(par, data, sparsity=0.5, method="nettrim", schedule="parallel",
                   allocation="uniform", executor="serial", max_samples=10_000)
    with torch.no_grad():
        err = [float(((m(x) - ref(x)) ** 2).sum()) for m in (net, par)]
    assert err[0] < err[1]


def test_gain_rule_and_dense_layers():
    """sparsity=None runs the authors' rules from the gain; a layer allotted 0 stays dense."""
    net, data = mlp(), calib()
    ref = copy.deepcopy(net)
    X = collect_samples(net, find_layers(net, include="0"), data)["0"][0][0]
    first = lt.solve_layer(ref[0].weight.detach().numpy(), X, bias=ref[0].bias.detach().numpy(),
                           method="nettrim", activation="relu", gain=0.1)
    rep = lt.prune_model(net, data, sparsity=None, method="nettrim", schedule="cascade",
                         executor="serial", gain=0.1)
    assert [r.status for r in rep.layers] == ["solved"] * 3
    np.testing.assert_allclose(net[0].weight.detach().numpy(), first.W, atol=1e-12)
    assert all(r.sparsity > 0 for r in rep.layers)
    net2 = copy.deepcopy(ref)
    calls = []
    rep = lt.prune_model(net2, data, sparsity={"0": 0.0, "2": 0.5, "4": 0.5},
                         method="nettrim", schedule="cascade", executor="serial",
                         progress=lambda done, total, key, res: calls.append((done, total)))
    assert rep.layers[0].status == "dense"
    assert calls == [(1, 2), (2, 2)]  # the progress count skips the layer left dense
    torch.testing.assert_close(net2[0].weight, ref[0].weight, rtol=0, atol=0)
    assert abs(rep.layers[1].sparsity - 0.5) <= 0.01


def test_per_sample_bad_input():
    net, data = mlp(), calib()
    with pytest.raises(InvalidInputError, match="one-shot"):
        lt.prune_model(net, iter(data), sparsity=0.5, method="nettrim", schedule="parallel")
    with pytest.raises(InvalidInputError, match="max_samples"):
        lt.prune_model(net, data, sparsity=0.5, method="nettrim", max_samples=-1)
    with pytest.raises(InvalidInputError, match="eps_min"):
        lt.solve_layer(np.ones((2, 3)), np.ones((5, 3)), method="nettrim", eps_min=-1.0)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(InvalidInputError, match="pattern 2:4 needs another method"):
        lt.prune_model(net, data, sparsity=None, pattern="2:4", method="nettrim",
                       executor="serial")
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


@pytest.mark.parametrize("method", ["nettrim", "nettrim-cvx"])
def test_a_sparsity_given_to_net_trim_is_its_target(method):
    """solve_layer(..., sparsity=s) or nnz=k with Net-Trim searches the gain for that
    sparsity (within 1%), as target_sparsity does; a structured pattern is refused, not
    silently ignored."""
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((12, 40)), rng.standard_normal((200, 40))
    for kw, want in (({"sparsity": 0.6}, 0.6), ({"nnz": 120}, 0.75)):
        r = lt.solve_layer(W, X, method=method, activation="relu", **kw)
        assert abs(r.sparsity - want) <= 0.01 + 1e-12, (kw, r.sparsity)
        assert r.settings["target_sparsity"] == pytest.approx(want, abs=1 / W.size)
    with pytest.raises(InvalidInputError, match="not both"):
        lt.solve_layer(W, X, method=method, activation="relu", sparsity=0.5,
                       target_sparsity=0.5)
    with pytest.raises(InvalidInputError, match="or eps, not both"):
        lt.solve_layer(W, X, method=method, activation="relu", sparsity=0.5, eps=0.1)
    for kw in ({"sparsity": 0.0}, {"nnz": W.size}):  # nothing to prune: the layer as it is
        r = lt.solve_layer(W, X, method=method, activation="relu", **kw)
        assert r.sparsity == 0.0 and r.rel_error == 0.0 and np.array_equal(r.W, W)
    with pytest.raises(InvalidInputError, match="per_neuron must be True or False"):
        lt.solve_layer(W, X, method=method, activation="relu", per_neuron="false")
    for pattern in ("2:4", "row"):
        with pytest.raises(InvalidInputError, match=f"pattern {pattern} needs another"):
            lt.solve_layer(W, X, method=method, activation="relu", sparsity=0.5,
                           pattern=pattern)


def test_per_sample_resume_checks_the_sample_count(tmp_path):
    """The sampled rows are Net-Trim's data: a resume with another max_samples is refused,
    and one with the same finishes from the checkpoint without solving a layer again."""
    ck = tmp_path / "ck"
    opts = dict(sparsity=0.5, method="nettrim", schedule="parallel", allocation="uniform",
                executor="serial", max_samples=100)
    net = mlp()
    lt.prune_model(copy.deepcopy(net), calib(), checkpoint=ck, **opts)
    with pytest.raises(InvalidInputError, match=r"settings differ .*max_samples: 100 -> 200"):
        lt.prune_model(copy.deepcopy(net), calib(), resume=ck, **{**opts, "max_samples": 200})
    rep = lt.prune_model(copy.deepcopy(net), calib(), resume=ck, **opts)
    assert all(r.resumed for r in rep.layers)


def test_per_sample_resume_of_the_later_layers_gives_the_same_bits(tmp_path):
    """A resume samples only the unfinished layers: each layer's sample stream is keyed by its
    name, not by its place among the layers asked for, so the bits match a run in one go."""
    ck = tmp_path / "ck"
    opts = dict(sparsity=0.5, method="nettrim", schedule="parallel", allocation="uniform",
                executor="serial", max_samples=60)
    net = mlp()
    ref = copy.deepcopy(net)
    lt.prune_model(ref, calib(), **opts)
    full = copy.deepcopy(net)
    lt.prune_model(full, calib(), checkpoint=ck, **opts)
    saved = sorted((ck / "layers").iterdir())
    assert len(saved) >= 2
    saved[-1].unlink()  # as if the run had died before its last layer
    resumed = copy.deepcopy(net)
    rep = lt.prune_model(resumed, calib(), resume=ck, **opts)
    assert [r.resumed for r in rep.layers].count(False) == 1
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
