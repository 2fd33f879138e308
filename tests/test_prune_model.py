"""Whole-model pruning of real torch models: parallel and cascade schedules, executors, the
report, and bad input."""

import numpy as np
import pytest
import torch
from torch import nn

import layertrim as lt
from layertrim.adapters.torch import collect_grams, find_layers
from layertrim.errors import InvalidInputError
from layertrim.layerwise.executors import LocalExecutor


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 3 * 3, 10), nn.ReLU(), nn.Linear(10, 4))


def calib(seed=0, batches=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 2, 8, 8, generator=g) for _ in range(batches)]


@pytest.mark.parametrize("schedule", ["parallel", "cascade"])
def test_every_layer_gets_its_exact_sparsity_and_the_report_adds_up(schedule):
    model = cnn()
    report = lt.prune_model(model, calib(), sparsity=0.5, method="sparsegpt", schedule=schedule,
                            executor="serial", allocation="uniform")
    layers = find_layers(model)
    assert [r.name for r in report.layers] == ["0", "2", "2", "5", "7"]  # conv "2": 2 groups
    for la in layers:
        w = la.module.weight
        assert int((w == 0).sum()) == w.numel() // 2
    assert report.total_weights == sum(la.module.weight.numel() for la in layers)
    assert report.sparsity == pytest.approx(0.5)
    assert all(r.status == "solved" for r in report.layers)
    assert "total" in str(report) and '"schedule"' in report.to_json()
    tm = report.timing
    assert tm["wall_s"] >= tm["calibration_s"] + tm["solve_s"] + tm["writeback_s"] > 0


def test_float32_grams_prune_a_rank_deficient_cascade_like_float64():
    """gram_dtype="float32" on a cascade whose last layers see fewer calibration rows (48) than
    inputs (73): the rounded Grams are indefinite there, and the prune must still finish with
    every layer's error within a few percent of the float64 run's."""
    errs = {}
    for dtype in ("float64", "float32"):
        rep = lt.prune_model(cnn(), calib(), sparsity=0.5, method="sparsegpt",
                             schedule="cascade", executor="serial", allocation="uniform",
                             gram_dtype=dtype)
        assert all(r.status == "solved" for r in rep.layers)
        errs[dtype] = np.array([r.rel_error for r in rep.layers])
    assert np.all(np.isfinite(errs["float32"]))
    np.testing.assert_allclose(errs["float32"], errs["float64"], rtol=0.05, atol=1e-6)


def test_parallel_equals_solving_each_layer_on_the_dense_networks_gram():
    model, data = cnn(), calib()
    dense = cnn()
    grams = collect_grams(dense, find_layers(dense), data)
    lt.prune_model(model, data, sparsity=0.6, method="wanda", schedule="parallel",
                   executor="serial", allocation="uniform")
    for la, ld in zip(find_layers(model), find_layers(dense), strict=True):
        # a layer's groups prune round(0.6 * its size) together, split as evenly as they can
        kept = [int(np.count_nonzero(la.weight(g))) for g in range(la.groups)]
        assert sum(kept) == la.module.weight.numel() - int(0.6 * la.module.weight.numel() + 0.5)
        assert max(kept) - min(kept) <= 1
        for g in range(la.groups):
            r = lt.solve_layer(ld.weight(g), gram=grams[la.name][g], bias=ld.bias(g),
                               nnz=kept[g], method="wanda")
            np.testing.assert_allclose(la.weight(g), r.W, atol=1e-6)  # float32 model


def test_cascade_sees_the_pruned_inputs():
    data = calib()
    par, cas = cnn(), cnn()
    # float64 products: the Gram and the cross term of the first layer's identical inputs are
    # then the same sums (float32 products round them apart, by ~1e-7)
    lt.prune_model(par, data, sparsity=0.7, method="sparsegpt", schedule="parallel",
                   executor="serial", allocation="uniform", gram_dtype="float64")
    lt.prune_model(cas, data, sparsity=0.7, method="sparsegpt", schedule="cascade",
                   executor="serial", allocation="uniform", gram_dtype="float64")
    first = [la.weight() for la in find_layers(par)][0], [la.weight() for la in find_layers(cas)][0]
    # the first layer sees the same inputs: its cascade target is W0 itself (up to the 1e-8
    # damping of the least squares), so the pruned weights agree to float32 rounding
    np.testing.assert_allclose(*first, rtol=1e-5, atol=1e-7)
    assert not np.allclose(find_layers(par)[-1].weight(), find_layers(cas)[-1].weight())
    # the cascade output is closer to the dense network's
    dense = cnn()
    with torch.no_grad():
        ref = torch.cat([dense(x) for x in data])
        e_par = float(((torch.cat([par(x) for x in data]) - ref) ** 2).sum())
        e_cas = float(((torch.cat([cas(x) for x in data]) - ref) ** 2).sum())
    assert e_cas < e_par


@pytest.mark.parametrize("schedule", ["cascade", "parallel"])
def test_each_layers_output_error_against_the_dense_network(schedule):
    """rel_error is against the layer's own target (in cascade the dense output projected onto
    the pruned inputs; in parallel the dense output on the dense inputs); rel_error_dense is
    what a user measures: the layer's output in the pruned network against the dense
    network's. Checked by running both networks independently, layer by layer and group by
    group."""
    data = calib()
    model, dense = cnn(), cnn()
    report = lt.prune_model(model, data, sparsity=0.7, method="sparsegpt", schedule=schedule,
                            executor="serial", allocation="uniform")
    outs: dict[str, list] = {}
    for net, tag in ((model, "p"), (dense, "d")):
        hooks = [m.register_forward_hook(
            lambda _m, _i, o, key=(name, tag): outs.setdefault(key, []).append(o))
            for name, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        with torch.no_grad():
            for x in data:
                net(x)
        for h in hooks:
            h.remove()
    for rec in report.layers:
        p, d = (torch.cat(outs[rec.name, t]).double() for t in ("p", "d"))
        if p.dim() == 4:  # a convolution: this group's output channels
            p, d = (t[:, rec.group * rec.m:(rec.group + 1) * rec.m] for t in (p, d))
        want = float(((p - d) ** 2).sum() / (d ** 2).sum())
        assert rec.rel_error_dense == pytest.approx(want, rel=1e-6)
    later = [r for r in report.layers if r.name != "0"]
    assert any(r.rel_error_dense > 1.5 * r.rel_error for r in later)  # they differ
    if schedule == "parallel":  # the first layer's inputs are the dense network's
        first = [r for r in report.layers if r.name == "0"]
        assert all(r.rel_error_dense == pytest.approx(r.rel_error, rel=1e-6) for r in first)
    assert "vs dense" in str(report) and "vs_dense_s" in report.timing
    # the measurement's dense copy shares the snapshot's tensors: the model stays pruned
    assert sum(int((m.weight != 0).sum()) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv2d))) == report.total_nnz


def test_the_frontier_cache_gives_the_same_cascade_with_one_pass_per_child():
    data = calib()
    a, b = cnn(), cnn()
    calls = {"full": 0, "cached": 0}
    a[0].register_forward_hook(lambda *_: calls.__setitem__("full", calls["full"] + 1))
    b[0].register_forward_hook(lambda *_: calls.__setitem__("cached", calls["cached"] + 1))
    opts = dict(sparsity=0.7, method="sparsegpt", schedule="cascade", executor="serial",
                allocation="uniform")
    lt.prune_model(a, data, frontier=False, **opts)
    lt.prune_model(b, data, frontier=True, **opts)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
    assert calls["cached"] < calls["full"]  # the first conv ran once per batch, not per layer


def test_cascade_target_is_the_least_squares_map_to_the_dense_outputs():
    from layertrim.layerwise.schedule import cascade_target

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    X_hat = X + 0.3 * rng.standard_normal(X.shape)
    W, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
    g = lt.Gram(6, 6).update(X_hat, X)
    Wt, bt = cascade_target(W, b, g)
    A = np.hstack([X_hat, np.ones((200, 1))])
    ref = np.linalg.lstsq(A, X @ W.T + b, rcond=None)[0].T  # brute force, from the samples
    np.testing.assert_allclose(np.hstack([Wt, bt[:, None]]), ref, rtol=1e-6, atol=1e-8)


def test_cascade_target_of_a_rank_deficient_float32_gram_is_the_fit_nearest_w():
    """Fewer rows than inputs and a Gram rounded in float32 (as a float32 model's is): the
    damped Cholesky fails, and the target must be the least-squares fit nearest W (W plus
    the minimum-norm change), which keeps W where the data says nothing."""
    from layertrim.layerwise.schedule import cascade_target

    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 30))
    X_hat = X + 0.3 * rng.standard_normal(X.shape)
    W, b = rng.standard_normal((4, 30)), rng.standard_normal(4)
    g = lt.Gram(30, 30).update(X_hat, X)
    g.H = (g.H.astype(np.float32) - 1e-5 * np.abs(g.H).max() * np.eye(30)).astype(np.float64)
    with pytest.raises(np.linalg.LinAlgError):  # the fast path cannot take this Gram
        np.linalg.cholesky(g.augmented() + 1e-8 * np.mean(np.diag(g.augmented())) * np.eye(31))
    Wt, bt = cascade_target(W, b, g)
    A = np.hstack([X_hat, np.ones((12, 1))])
    Wa = np.hstack([W, b[:, None]])
    # the minimum-norm change, from the samples
    ref = Wa + np.linalg.lstsq(A, X @ W.T + b - A @ Wa.T, rcond=None)[0].T
    np.testing.assert_allclose(np.hstack([Wt, bt[:, None]]), ref, rtol=1e-3, atol=1e-4)


def test_local_processes_give_bit_identical_results():
    data = calib()
    a, b = cnn(), cnn()
    lt.prune_model(a, data, sparsity=0.5, method="sparsegpt", schedule="parallel",
                   executor="serial", allocation="uniform")
    lt.prune_model(b, data, sparsity=0.5, method="sparsegpt", schedule="parallel",
                   executor=LocalExecutor(workers=2), allocation="uniform")
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


def test_sparsity_dict_layer_filters_and_mask_convention():
    model = cnn()
    report = lt.prune_model(model, calib(), sparsity={"0": 0.25, "5": 0.75}, layers=["0", "5"],
                            method="magnitude", executor="serial", mask_convention=True)
    assert {r.name for r in report.layers} == {"0", "5"}
    assert hasattr(model[0], "weight_mask") and not hasattr(model[2], "weight_mask")
    assert float((model[5].weight == 0).float().mean()) == pytest.approx(0.75)
    assert float((model[2].weight == 0).float().mean()) == 0.0


def test_a_sparsity_dict_prunes_the_layers_it_names():
    model = cnn()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    report = lt.prune_model(model, calib(), sparsity={"2": 0.6}, method="magnitude",
                            executor="serial")
    assert {r.name for r in report.layers} == {"2"}  # its two groups
    assert float((model[2].weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)
    for n, p in model.state_dict().items():
        if not n.startswith("2."):
            assert torch.equal(p, before[n]), n


def test_bad_input():
    model, data = cnn(), calib()
    for kw, msg in [({"schedule": "sideways"}, "schedule"),
                    ({"method": "nettrim", "max_samples": 0}, "max_samples"),
                    ({"method": "bogus"}, "unknown method"), ({"sparsity": 1.0}, "sparsity"),
                    ({"sparsity": {"0": 0.5, "nope": 0.5}}, r"unknown layers \['nope'\]"),
                    ({"sparsity": {"0": 0.5}, "layers": ["0", "2"]}, r"missing \['2'\]"),
                    ({"sparsity": "0.5"}, "must be a number in .* got str '0.5'"),
                    ({"sparsity": {"0": 1.5, "typo": 0.5}}, r"layer 0: sparsity 1.5 is outside"),
                    ({"executor": "cloud"}, "executor"),
                    ({"layers": "nope"}, "no prunable layer")]:
        opts = {"sparsity": 0.5, "executor": "serial", **kw}
        with pytest.raises(InvalidInputError, match=msg):
            lt.prune_model(model, data, **opts)
    with pytest.raises(InvalidInputError, match="empty"):
        lt.prune_model(model, [], sparsity=0.5, executor="serial")
    with pytest.raises(InvalidInputError, match=r"shape \(4, 3, 8, 8\).*at layer 0"):
        lt.prune_model(model, [torch.randn(4, 3, 8, 8)], sparsity=0.5, executor="serial")
    # a batch that the first layer takes and a later one refuses (10 x 10 images: the Linear
    # gets 8 * 4 * 4 inputs, not 8 * 3 * 3), in both schedules (cascade: the reference too)
    for schedule in ("parallel", "cascade"):
        with pytest.raises(InvalidInputError, match=r"shape \(4, 2, 10, 10\).*at layer 5"):
            lt.prune_model(cnn(), [torch.randn(4, 2, 10, 10)], sparsity=0.5,
                           executor="serial", schedule=schedule)
    with pytest.raises(InvalidInputError, match="no prunable layer"):
        lt.prune_model(nn.Sequential(nn.ReLU()), data, sparsity=0.5)
    with pytest.raises(InvalidInputError, match="one-shot iterator"):
        lt.prune_model(model, iter(data), sparsity=0.5, schedule="cascade")
    report = lt.prune_model(model, iter(data), sparsity=0.5, schedule="parallel",
                            method="magnitude", executor="serial")  # one pass is enough
    assert report.sparsity == pytest.approx(0.5, abs=0.01)


def test_nan_weights_are_refused_by_layer_name():
    model, data = cnn(), calib()
    with torch.no_grad():
        model[5].weight[0, 0] = float("nan")
    with pytest.raises(InvalidInputError, match="layer 5: its weight contains NaN"):
        lt.prune_model(model, data, sparsity=0.5, executor="serial")


@pytest.mark.parametrize("schedule", ["parallel", "cascade"])
def test_a_failing_layer_is_named_and_the_model_left_untouched(schedule):
    model, data = cnn(), calib()
    before = [p.detach().clone() for p in model.parameters()]
    # 1:3 fits d = 18, 36, 72 but not the last layer (d = 10): cascade has written three
    # layers back by then, and must restore them
    with pytest.raises(InvalidInputError, match="layer 7"):
        lt.prune_model(model, data, sparsity=None, method="sparsegpt", pattern="1:3",
                       schedule=schedule,
                       executor="serial")
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.stem = nn.Conv2d(2, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.b(torch.relu(self.a(h))))  # skip connection
        return self.head(h.mean((2, 3)))


@pytest.mark.parametrize("schedule", ["parallel", "cascade"])
def test_a_model_with_a_skip_connection(schedule):
    model, data = Residual(), calib()
    dense = Residual()
    report = lt.prune_model(model, data, sparsity=0.6, method="sparsegpt", schedule=schedule,
                            executor="serial", allocation="uniform")
    assert [r.name for r in report.layers] == ["stem", "a", "b", "head"]
    for la in find_layers(model):
        w = la.module.weight
        assert int((w == 0).sum()) == round(0.6 * w.numel())
    with torch.no_grad():
        ref = torch.cat([dense(x) for x in data])
        err = float(((torch.cat([model(x) for x in data]) - ref) ** 2).sum() / (ref**2).sum())
    assert err < 0.05  # 60% of the weights gone, the function kept


def test_parallel_with_a_one_shot_iterator_says_why_vs_dense_is_missing():
    """The calibration pass uses up a generator: the measurement against the dense network
    gets no batch, and says so in the notes (it reported 0.0 for every layer)."""
    data = calib()
    report = lt.prune_model(cnn(), (x for x in data), sparsity=0.5, method="magnitude",
                            schedule="parallel", executor="serial", allocation="uniform")
    assert all(r.rel_error_dense is None for r in report.layers)
    assert any("one-shot iterator" in n for n in report.notes)


@pytest.mark.parametrize("schedule", ["cascade", "parallel"])
def test_the_dense_measurement_can_be_skipped(schedule):
    report = lt.prune_model(cnn(), calib(), sparsity=0.5, method="magnitude", schedule=schedule,
                            executor="serial", allocation="uniform", vs_dense=False)
    assert all(r.rel_error_dense is None for r in report.layers)
    assert "vs dense" not in str(report) and not report.notes
    with pytest.raises(lt.InvalidInputError, match="vs_dense"):
        lt.prune_model(cnn(), calib(), sparsity=0.5, method="magnitude", vs_dense="no")
