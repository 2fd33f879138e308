"""Global neural pruning and on-the-fly thresholds."""

import numpy as np
import pytest

import layertrim as lt
from layertrim.solvers.global_threshold import global_threshold, shrink_chain
from layertrim.solvers.onthefly import masked_rel_error, onthefly_prune


def _chain(seed=0, sizes=(20, 30, 25, 16, 10)):
    rng = np.random.default_rng(seed)
    pairs = zip(sizes[:-1], sizes[1:], strict=True)
    Ws = [rng.standard_normal((o, i)) * rng.uniform(0.1, 3.0)
          * np.exp(0.5 * rng.standard_normal((o, 1))) for i, o in pairs]
    bs = [rng.standard_normal(o) for o in sizes[1:]]
    return Ws, bs


def _count(ws, bs):
    return sum(w.size for w in ws) + sum(b.size for b in bs)


@pytest.mark.parametrize("frac", [0.1, 0.25, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("normalize", ["l2", "max"])
def test_global_threshold_hits_parameter_target_within_one_neuron_per_layer(frac, normalize):
    Ws, bs = _chain(1)
    r = global_threshold(Ws, target_fraction=frac, normalize=normalize)
    ws, bb = shrink_chain(Ws, bs, r.kept)
    params = _count(ws, bb)  # counted from the shrunk arrays, not from the solver
    assert params == r.params <= r.target
    # one neuron of layer l costs its row (+ bias) and its column in layer l+1
    k = [len(x) for x in r.kept]
    prev = [Ws[0].shape[1]] + k[:-1]
    one_each = sum(prev[li] + 1 + k[li + 1] for li in range(len(Ws) - 1))
    assert r.target - params <= one_each
    assert r.target == round(frac * r.total)


def test_one_global_threshold_separates_kept_from_dropped():
    Ws, _ = _chain(2)
    r = global_threshold(Ws, target_fraction=0.3)
    for li, s in enumerate(r.scores):
        kept = np.zeros(s.size, dtype=bool)
        kept[r.kept[li]] = True
        best = np.argmax(s)  # every layer keeps its best neuron
        others = kept.copy()
        others[best] = False
        assert np.all(s[others] >= r.threshold)
        assert np.all(s[~kept] <= r.threshold)
        # normalised within the layer: rescaling a layer changes nothing
    Ws2 = [w * (10.0 if i == 1 else 1.0) for i, w in enumerate(Ws)]
    r2 = global_threshold(Ws2, target_fraction=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(r.kept, r2.kept, strict=True))


def test_shrunk_chain_computes_the_masked_chain():
    Ws, bs = _chain(3)
    r = global_threshold(Ws, target_fraction=0.4)
    ws, bb = shrink_chain(Ws, bs, r.kept)
    x = np.random.default_rng(0).standard_normal((7, Ws[0].shape[1]))
    h, hs = x, x
    for li, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        keep = np.zeros(W.shape[0], dtype=bool)
        keep[r.kept[li]] = True
        h = np.where(keep, h @ W.T + b, 0.0)
        hs = hs @ ws[li].T + bb[li]
        if li < len(Ws) - 1:
            h, hs = np.maximum(h, 0), np.maximum(hs, 0)
    np.testing.assert_allclose(hs, h, atol=1e-10)


def test_conv_chain_counts_kernels_and_flattened_columns():
    rng = np.random.default_rng(4)
    Ws = [rng.standard_normal((6, 1, 5, 5)), rng.standard_normal((16, 6, 5, 5)),
          rng.standard_normal((120, 16 * 25)), rng.standard_normal((10, 120))]
    bs = [rng.standard_normal(w.shape[0]) for w in Ws]
    r = global_threshold(Ws, target_fraction=0.3)
    ws, bb = shrink_chain(Ws, bs, r.kept)
    assert _count(ws, bb) == r.params
    assert ws[2].shape == (len(r.kept[2]), 25 * len(r.kept[1]))


def test_registry_global_threshold_keeps_largest_columns(layer):
    W, X, b = layer
    r = lt.solve_layer(W, X, bias=b, sparsity=0.5, method="global-threshold")
    cols = np.flatnonzero(r.mask.any(axis=0))
    assert set(cols) == set(np.argsort(-np.linalg.norm(W, axis=0))[:16])


def test_onthefly_rules():
    Ws, _ = _chain(5)
    masks, ks = onthefly_prune(Ws, rule="shared", multiple=0.8)
    assert ks == [0.8] * len(Ws)
    for W, m in zip(Ws, masks, strict=True):
        assert np.array_equal(m, np.abs(W) >= 0.8 * W.std())
    _, ks = onthefly_prune(Ws, rule="linear", k_first=0.5, k_last=1.1)
    np.testing.assert_allclose(ks, np.linspace(0.5, 1.1, len(Ws)))
    rng = np.random.default_rng(6)
    grams = []
    for W in Ws:
        X = rng.standard_normal((200, W.shape[1]))
        grams.append(X.T @ X)
    masks, ks = onthefly_prune(Ws, rule="bisect", grams=grams, error_budget=0.05)
    for W, H, m, k in zip(Ws, grams, masks, ks, strict=True):
        assert masked_rel_error(W, H, m) <= 0.05
        # the largest such multiple: a little more pruning breaks the budget
        assert masked_rel_error(W, H, np.abs(W) >= (k + 1e-3) * W.std()) > 0.05 or k == 10.0
        assert m.mean() < 1.0


def test_registry_onthefly_hits_target_or_budget(layer):
    W, X, b = layer
    r = lt.solve_layer(W, X, sparsity=0.7, method="onthefly")
    assert r.nnz == round(0.3 * W.size)
    r = lt.solve_layer(W, X, method="onthefly", error_budget=0.1)
    assert r.rel_error <= 0.1 and r.sparsity > 0


def test_taylor_scores_and_registry(layer):
    from layertrim.solvers.taylor import taylor_scores

    W, X, b = layer
    H = X.T @ X
    s = taylor_scores(W, W @ H, axis="inputs")
    # brute force: first-order change of 1/2 ||X W^T||^2 when column j is zeroed
    for j in range(W.shape[1]):
        D = np.zeros_like(W)
        D[:, j] = -W[:, j]
        assert s[j] == pytest.approx(abs(np.sum((W @ H) * D)), rel=1e-10)
    r = lt.solve_layer(W, X, sparsity=0.5, method="taylor")
    assert set(np.flatnonzero(r.mask.any(axis=0))) == set(np.argsort(-s)[:16])
    conv = np.random.default_rng(0).standard_normal((4, 3, 2, 2))
    np.testing.assert_allclose(taylor_scores(conv, np.ones_like(conv)),
                               np.abs(conv.sum(axis=(1, 2, 3))))
    with pytest.raises(lt.InvalidInputError, match="grad has shape"):
        taylor_scores(W, W[:, :3])


def test_onthefly_error_budget_counts_the_bias():
    """The budget is on the reported relative error, whose denominator has the bias: inputs
    with a mean of 3 and a bias cancelling it shrink ||Xa W0a^T|| well below ||X W0^T||, and
    the budget measured without the bias let the reported error run to 8x the budget."""
    rng = np.random.default_rng(0)
    W, X = rng.standard_normal((8, 20)), rng.standard_normal((300, 20)) + 3.0
    b = -(X @ W.T).mean(axis=0)
    r = lt.solve_layer(W, X, bias=b, method="onthefly", error_budget=0.05)
    assert r.rel_error <= 0.05 and r.sparsity > 0


def test_onthefly_and_pivot_refuse_what_they_cannot_honour():
    rng = np.random.default_rng(1)
    W, X = rng.standard_normal((8, 16)), rng.standard_normal((60, 16))
    with pytest.raises(lt.InvalidInputError, match="not both"):  # the sparsity was dropped
        lt.solve_layer(W, X, sparsity=0.9, method="onthefly", multiple=0.5)
    for method, opts in (("onthefly", {}), ("pivot", {"block": 4})):
        for pattern in ("2:4", "row"):  # they labelled their unstructured masks so
            with pytest.raises(lt.InvalidInputError, match="pattern='layer'"):
                lt.solve_layer(W, X, sparsity=0.5, method=method, pattern=pattern, **opts)


def test_the_threshold_is_the_global_cut_not_a_forced_neuron():
    """A layer whose best neuron scores low keeps it anyway; the threshold is still the cut of
    the global order, so no dropped neuron anywhere scores above it (it was the forced
    neuron's low score, below 16 dropped ones)."""
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((2000, 3)), rng.standard_normal((20, 2000)),
          rng.standard_normal((500, 20))]
    r = global_threshold(Ws, target_params=3000)
    for li, s in enumerate(r.scores):
        dropped = np.ones(s.size, dtype=bool)
        dropped[r.kept[li]] = False
        assert np.all(s[dropped] <= r.threshold)


def test_grouped_convolutions_and_bad_kept_lists_are_refused():
    rng = np.random.default_rng(0)
    Ws = [rng.standard_normal((3, 3, 3, 3)), rng.standard_normal((3, 1, 3, 3)),
          rng.standard_normal((10, 3))]
    with pytest.raises(lt.InvalidInputError, match="depthwise"):
        global_threshold(Ws, target_fraction=0.5)
    Ws, bs = _chain(0)
    with pytest.raises(lt.InvalidInputError, match="repeat"):
        shrink_chain(Ws, bs, [np.array([0, 0])] + [np.arange(W.shape[0]) for W in Ws[1:]])
