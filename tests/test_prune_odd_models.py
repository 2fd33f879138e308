"""prune_model on models that are not plain chains: layers registered out of forward order,
weights tied to non-prunable modules, weight_norm, rank-deficient calibration at sparsity 0,
and calibration given as (inputs, labels) or as dict batches."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import layertrim as lt
from layertrim.errors import InvalidInputError


class HeadFirst(nn.Module):
    """The head is registered before the body that feeds it."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 4)
        self.body = nn.Linear(8, 16)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


def test_cascade_prunes_in_forward_order_not_registration_order():
    torch.manual_seed(0)
    x = torch.randn(200, 8, dtype=torch.float64)
    m = HeadFirst().double()
    dense = copy.deepcopy(m)
    rep = lt.prune_model(m, x, sparsity=0.6, method="sparsegpt", allocation="uniform",
                         executor="serial")
    assert [r.name for r in rep.layers] == ["body", "head"]
    # the head's error is measured on the pruned body's outputs: its reported error is the
    # cascade objective recomputed on the inputs it sees in the final network
    with torch.no_grad():
        Xh = torch.relu(m.body(x)).numpy()
        X = torch.relu(dense.body(x)).numpy()
    W, b = m.head.weight.detach().numpy(), m.head.bias.detach().numpy()
    W0, b0 = dense.head.weight.detach().numpy(), dense.head.bias.detach().numpy()
    target = X @ W0.T + b0
    err = np.sum((Xh @ W.T + b - target) ** 2)
    # the least-squares target's own error on Xh is the floor the cascade subtracts
    A = np.hstack([Xh, np.ones((len(Xh), 1))])
    sol = np.linalg.lstsq(A, target, rcond=None)[0]
    floor = np.sum((A @ sol - target) ** 2)
    ref = np.sum((A @ sol) ** 2)
    assert rep.layers[1].rel_error == pytest.approx((err - floor) / ref, rel=1e-6)


def test_a_weight_tied_to_an_embedding_is_pruned_with_a_warning():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 8)
            self.fc = nn.Linear(8, 8)
            self.head = nn.Linear(8, 12, bias=False)
            self.head.weight = self.emb.weight

        def forward(self, t):
            return self.head(torch.relu(self.fc(self.emb(t))))

    torch.manual_seed(0)
    m = LM()
    with pytest.warns(UserWarning, match=r"head's weight is also emb\.weight"):
        lt.prune_model(m, torch.randint(0, 12, (64, 5)), sparsity=0.5, method="magnitude",
                       allocation="uniform", executor="serial", vs_dense=False)
    assert float((m.emb.weight == 0).float().mean()) == 0.5


def test_old_style_weight_norm_is_refused():
    m = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(InvalidInputError, match="weight_norm"):
        lt.prune_model(m, torch.randn(32, 8), sparsity=0.5, method="magnitude",
                       executor="serial")


@pytest.mark.parametrize("schedule", ["parallel", "cascade"])
@pytest.mark.parametrize("method", ["sparsegpt", "l0-admm", "magnitude"])
def test_sparsity_zero_with_fewer_rows_than_inputs_leaves_the_weights(schedule, method):
    # 16 rows for 32 inputs; dead ReLU units feed the last layer: nothing may change (up to
    # rounding in the cascade target: the weights moved by 70-90% before it was anchored at W)
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                      nn.Linear(64, 4)).double()
    dense = copy.deepcopy(m)
    x = torch.randn(16, 32, dtype=torch.float64)
    lt.prune_model(m, x, sparsity=0.0, schedule=schedule, method=method,
                   allocation="uniform", executor="serial")
    for a, b in zip(m, dense, strict=True):
        if isinstance(a, nn.Linear):
            torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6)
            torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=1e-6)


def test_calibration_as_an_inputs_labels_pair_and_as_dict_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    X, y = torch.randn(40, 8), torch.randint(0, 4, (40,))
    a, b, c = copy.deepcopy(net), copy.deepcopy(net), copy.deepcopy(net)
    opts = dict(sparsity=0.5, method="sparsegpt", executor="serial", vs_dense=False)
    lt.prune_model(a, (X, y), **opts)
    lt.prune_model(b, [X], **opts)
    lt.prune_model(c, [{"inputs": X[:20], "label": y[:20]}, {"inputs": X[20:], "label": y[20:]}],
                   **opts)
    for m in (a, c):
        for p, q in zip(m.parameters(), b.parameters(), strict=True):
            torch.testing.assert_close(p, q)


def test_a_layer_pattern_that_matches_nothing_is_reported():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match="exclude pattern 'head' matches no prunable layer"):
        lt.prune_model(net, torch.randn(32, 8), sparsity=0.5, method="magnitude",
                       exclude=["head"], executor="serial", vs_dense=False)


def test_a_transformer_layer_is_pruned_without_its_attention_out_proj():
    torch.manual_seed(0)
    m = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    with pytest.warns(UserWarning, match="out_proj"):
        rep = lt.prune_model(m, torch.randn(8, 5, 16), sparsity=0.5, method="sparsegpt",
                             allocation="uniform", executor="serial")
    assert sorted(r.name for r in rep.layers) == ["linear1", "linear2"]
    assert float((m.linear1.weight == 0).float().mean()) == 0.5


def test_a_layer_called_twice_is_compared_call_by_call_in_parallel():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 8)

        def forward(self, x):
            return self.a(torch.relu(self.a(x)))

    torch.manual_seed(0)
    m = Twice().double()
    dense = copy.deepcopy(m)
    x = torch.randn(64, 8, dtype=torch.float64)
    rep = lt.prune_model(m, x, sparsity=0.5, method="magnitude", schedule="parallel",
                         executor="serial")
    with torch.no_grad():
        outs = [m.a(x), m.a(torch.relu(m.a(x)))]
        refs = [dense.a(x), dense.a(torch.relu(dense.a(x)))]
    num = sum(float(((o - r) ** 2).sum()) for o, r in zip(outs, refs, strict=True))
    den = sum(float((r ** 2).sum()) for r in refs)
    assert rep.layers[0].rel_error_dense == pytest.approx(num / den, rel=1e-9)


def test_a_layer_called_by_keyword_is_a_clean_error():
    class Kw(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.b(input=torch.relu(self.a(x)))

    with pytest.raises(InvalidInputError, match="keyword"):
        lt.prune_model(Kw(), torch.randn(16, 8), sparsity=0.5, method="magnitude",
                       executor="serial")


def test_a_model_that_cannot_be_copied_is_refused_for_the_cascade():
    import threading

    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    net.lock = threading.Lock()
    with pytest.raises(InvalidInputError, match="parallel"):
        lt.prune_model(net, torch.randn(16, 8), sparsity=0.5, method="magnitude",
                       executor="serial")


def test_excluding_attention_warns_of_nothing():
    import warnings

    torch.manual_seed(0)
    m = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        lt.prune_model(m, torch.randn(8, 5, 16), sparsity=0.5, method="magnitude",
                       exclude="self_attn.*", allocation="uniform", executor="serial")


def test_counts_round_to_the_nearest_whole_weight_at_any_size():
    from layertrim.problem import round_half_up

    assert round_half_up(0.145 * 100) == 15  # a binary hair below the half
    assert round_half_up(0.123 * 100000004) == 12300000  # 12300000.492
    assert round_half_up(1e8 + 0.45) == 100000000


class _Tagger(nn.Module):
    """A model called with keyword inputs, as tokenised batches are: token ids and a mask."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(30, 12)
        self.fc1 = nn.Linear(12, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.fc1(self.emb(input_ids)))
        h = (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        return self.fc2(h)


@pytest.mark.parametrize("schedule", ["cascade", "parallel"])
@pytest.mark.parametrize("method", ["sparsegpt", "nettrim"])
def test_a_model_with_keyword_inputs_is_calibrated_from_dict_batches(schedule, method,
                                                                      tmp_path):
    """Dict batches without an input key are the model's keyword inputs (model(**batch)); the
    Grams are those of the inputs the layers really see (checked against the hooks' own
    capture), the prune runs in both schedules and resumes from its checkpoint."""
    from layertrim.adapters.torch import collect_grams, find_layers

    torch.manual_seed(0)
    net = _Tagger()
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 30, (8, 5), generator=g),
              "attention_mask": (torch.rand(8, 5, generator=g) > 0.2).float()}
             for _ in range(3)]
    layers = find_layers(net)
    grams = collect_grams(net, layers, calib, gram_dtype="float64")  # exact sums
    with torch.no_grad():
        X = torch.cat([net.emb(b["input_ids"]).reshape(-1, 12) for b in calib]).double()
    np.testing.assert_allclose(grams["fc1"][0].H, (X.T @ X).numpy(), rtol=1e-12, atol=1e-12)
    assert grams["fc2"][0].n == 24
    opts = dict(sparsity=0.5, method=method, schedule=schedule, executor="serial")
    dense = copy.deepcopy(net)
    report = lt.prune_model(net, calib, checkpoint=tmp_path / "ck", **opts)
    assert {r.name for r in report.layers} == {"fc1", "fc2"}
    assert (net.fc1.weight == 0).float().mean() > 0.2
    resumed = copy.deepcopy(dense)  # the dict batches' fingerprint matches the checkpoint's
    lt.prune_model(resumed, calib, resume=tmp_path / "ck", **opts)
    for p, q in zip(resumed.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    other = [dict(b, attention_mask=torch.ones(8, 5)) for b in calib]
    with pytest.raises(InvalidInputError, match="calibration"):
        lt.prune_model(copy.deepcopy(dense), other, resume=tmp_path / "ck", **opts)
    with pytest.raises(InvalidInputError, match="keyword inputs.*no tensor"):
        lt.prune_model(_Tagger(), [{"input_ids": [1, 2]}], **opts)


class _MixedPrecision(nn.Module):
    """A float32 head registered before a float64 body: the batch must reach the body as
    given (float64), not cast to the first parameter's dtype."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.body = nn.Linear(4, 8).double()

    def forward(self, x):
        return self.head(torch.relu(self.body(x)).float())


def test_batches_stay_as_given_for_a_model_of_mixed_dtypes():
    torch.manual_seed(0)
    net = _MixedPrecision()
    x = torch.randn(32, 4, dtype=torch.float64)
    lt.prune_model(net, [x], sparsity=0.5, method="magnitude", schedule="parallel",
                   executor="serial", allocation="uniform", vs_dense=False)
    assert (net.body.weight == 0).float().mean() == 0.5


def test_keyword_batches_from_mappings_and_nested_values_fingerprint_in_full():
    """A tokenizer's BatchEncoding is a UserDict: taken as keyword inputs like a dict. The
    checkpoint's fingerprint reads nested values in full (a repr abbreviates long arrays) and
    refuses what it cannot digest."""
    from collections import UserDict

    from layertrim.adapters.torch_calib import batches
    from layertrim.adapters.torch_fingerprint import calibration_fingerprint

    ids = torch.randint(0, 30, (4, 5))
    got = list(batches([UserDict(input_ids=ids, attention_mask=np.ones((4, 5)))]))
    assert isinstance(got[0], dict) and torch.equal(got[0]["input_ids"], ids)
    assert isinstance(got[0]["attention_mask"], torch.Tensor)
    a = {"ids": ids, "extra": {"m": torch.zeros(2000)}}
    b = {"ids": ids, "extra": {"m": torch.zeros(2000)}}
    b["extra"]["m"][1000] = 1
    assert calibration_fingerprint([a]) != calibration_fingerprint([b])
    assert calibration_fingerprint([a]) == calibration_fingerprint([dict(a)])
    with pytest.raises(InvalidInputError, match="cannot fingerprint"):
        calibration_fingerprint([{"ids": ids, "tok": object()}])


def test_keyword_inputs_with_labels_given_as_one_pair():
    """(keyword inputs, labels) passed as the calibration data is one labelled batch, as a
    DataLoader's (dict, labels) items are: the labels never reach the model."""
    from layertrim.adapters.torch_calib import batches

    ids = torch.randint(0, 30, (8, 5))
    batch = {"input_ids": ids, "attention_mask": torch.ones(8, 5)}
    got = list(batches((batch, torch.arange(8) % 3)))
    assert len(got) == 1 and torch.equal(got[0]["input_ids"], ids)
    net = _Tagger()
    lt.prune_model(net, (batch, torch.arange(8) % 3), sparsity=0.5, method="sparsegpt",
                   schedule="parallel", executor="serial")
    assert (net.fc1.weight == 0).float().mean() > 0.2


class _Masked(nn.Module):
    """A model of two positional inputs, model(x, mask), and an optional keyword one."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x, mask, scale=None):
        h = torch.relu(self.fc1(x)) * mask[:, None]
        return self.fc2(h if scale is None else h * scale)


@pytest.mark.parametrize("schedule", ["cascade", "parallel"])
@pytest.mark.parametrize("method", ["sparsegpt", "nettrim"])
def test_a_model_of_several_inputs_is_calibrated_from_inputs_batches(schedule, method,
                                                                     tmp_path):
    """``Inputs(x, mask, scale=...)`` batches call model(x, mask, scale=...): the Grams are
    those of what the layers see (the mask zeroes fc2's rows), from numpy arrays too, alone or
    in (Inputs, labels) pairs; the prune runs in both schedules and resumes from its
    checkpoint, whose fingerprint reads every argument; bad batches are named."""
    from layertrim.adapters.torch import Inputs, collect_grams, find_layers
    from layertrim.adapters.torch_calib import batches
    from layertrim.adapters.torch_fingerprint import calibration_fingerprint

    torch.manual_seed(0)
    net = _Masked()
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(10, 6, generator=g) for _ in range(3)]
    masks = [(torch.rand(10, generator=g) > 0.3).float() for _ in range(3)]
    calib = [Inputs(x, m.numpy(), scale=torch.tensor(2.0)) for x, m in zip(xs, masks, strict=True)]
    assert isinstance(calib[0].args[1], torch.Tensor)  # the array became a tensor
    grams = collect_grams(net, find_layers(net), calib, gram_dtype="float64")
    with torch.no_grad():
        H = torch.cat([torch.relu(net.fc1(x)) * m[:, None] * 2
                       for x, m in zip(xs, masks, strict=True)]).double()
    np.testing.assert_allclose(grams["fc2"][0].H, (H.T @ H).numpy(), rtol=1e-12, atol=1e-12)
    X = torch.cat(xs).double()
    np.testing.assert_allclose(grams["fc1"][0].H, (X.T @ X).numpy(), rtol=1e-12, atol=1e-12)
    labelled = [(b, torch.zeros(10, dtype=torch.long)) for b in calib]
    assert [b.args[0] is x for b, x in zip(batches(labelled), xs, strict=True)] == [True] * 3
    assert len(list(batches(calib[0]))) == 1  # one Inputs is one batch
    opts = dict(sparsity=0.5, method=method, schedule=schedule, executor="serial")
    dense = copy.deepcopy(net)
    report = lt.prune_model(net, labelled, checkpoint=tmp_path / "ck", **opts)
    assert {r.name for r in report.layers} == {"fc1", "fc2"}
    assert (net.fc1.weight == 0).float().mean() > 0.2
    resumed = copy.deepcopy(dense)
    lt.prune_model(resumed, labelled, resume=tmp_path / "ck", **opts)
    for p, q in zip(resumed.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    other = [Inputs(x, torch.ones(10), scale=torch.tensor(2.0)) for x in xs]
    assert calibration_fingerprint(other) != calibration_fingerprint(calib)
    with pytest.raises(InvalidInputError, match="calibration"):
        lt.prune_model(copy.deepcopy(dense), other, resume=tmp_path / "ck", **opts)
    with pytest.raises(InvalidInputError, match=r"inputs \(shape \(10, 5\), shape \(10,\)"):
        lt.prune_model(copy.deepcopy(dense), [Inputs(torch.randn(10, 5), torch.ones(10))],
                       **opts)
    with pytest.raises(InvalidInputError, match="holds no tensor"):
        Inputs(1, scale=2.0)


def test_inputs_batches_on_a_sequential_alone_and_as_a_labelled_pair():
    """An nn.Sequential given Inputs(x) in the cascade gives the weights it gets from x itself
    (the frontier cache, which slices the Sequential, steps aside for such batches rather than
    handing back the wrong statistics); one Inputs, and one (Inputs, labels) pair, are one
    batch each."""
    from layertrim.adapters.torch import Inputs
    from layertrim.adapters.torch_calib import batches

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    X, y = torch.randn(40, 8), torch.randint(0, 4, (40,))
    opts = dict(sparsity=0.5, method="sparsegpt", executor="serial", vs_dense=False)
    want = copy.deepcopy(net)
    lt.prune_model(want, [X[:20], X[20:]], **opts)
    for calib in ([Inputs(X[:20]), Inputs(X[20:])], [(Inputs(X[:20]), y[:20]), (Inputs(X[20:]),
                                                                                 y[20:])]):
        got = copy.deepcopy(net)
        lt.prune_model(got, calib, **opts)
        for p, q in zip(got.parameters(), want.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    whole = copy.deepcopy(net)
    lt.prune_model(whole, X, **opts)
    for calib in (Inputs(X), (Inputs(X), y)):
        assert len(list(batches(calib))) == 1
        got = copy.deepcopy(net)
        lt.prune_model(got, calib, **opts)
        for p, q in zip(got.parameters(), whole.parameters(), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    with pytest.raises(InvalidInputError, match="tensor or an iterable of batches"):
        lt.prune_model(copy.deepcopy(net), 5, **opts)


@pytest.mark.parametrize("method", ["l0-general", "l0-cutting-plane"])
def test_single_layer_methods_are_refused_by_prune_model_before_any_work(method):
    """l0-general and l0-cutting-plane need each layer's samples and activation, which only
    solve_layer gives them: prune_model used to calibrate and allocate, then fail in every
    layer (l0-cutting-plane's advice, activation='relu', was itself refused)."""
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def untouched():
        raise AssertionError("the calibration data was read")
        yield

    with pytest.raises(InvalidInputError, match=f"{method}.*single layers only.*l0-admm"):
        lt.prune_model(net, untouched(), sparsity=0.5, method=method, schedule="parallel",
                       executor="serial")


@pytest.mark.parametrize("allocation", ["owl", "global"])
def test_row_pattern_allocations_leave_a_weight_in_every_row(allocation):
    """With pattern="row" a layer can prune at most all but one weight of each row, not of
    each group: owl handed a 4-input layer 0.905 (of which no row can keep a weight) for a
    reachable 0.85 overall."""
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 64), nn.Linear(64, 64), nn.Linear(64, 8)

        def forward(self, x):
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    torch.manual_seed(0)
    x = torch.randn(256, 4)
    torch.manual_seed(0)
    net = Wide()
    with torch.no_grad():  # two of a's four inputs barely used: owl wants it pruned hard
        net.a.weight[:, 2:] *= 1e-3
    report = lt.prune_model(net, x, sparsity=0.85, pattern="row",
                            method="magnitude", schedule="parallel", allocation=allocation,
                            executor="serial", vs_dense=False)
    for mod in (net.a, net.b, net.c):
        kept = (mod.weight != 0).sum(1)
        assert int(kept.min()) >= 1 and len(set(kept.tolist())) == 1  # equal counts per row
    zeros = sum(int((m.weight == 0).sum()) for m in (net.a, net.b, net.c))
    total = sum(m.weight.numel() for m in (net.a, net.b, net.c))
    assert abs(zeros / total - 0.85) < 0.02  # per-row rounding
    assert {r.name for r in report.layers} == {"a", "b", "c"}


def test_the_report_counts_the_zeros_a_float16_model_holds():
    """Weights near float16's smallest subnormal round to zero when written back: the report
    counts the model's weights as written, not the float64 solution (130 zeros, reported
    128)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16))
    with torch.no_grad():
        net[0].weight.mul_(1e-7 / 0.25)
    net = net.half()
    report = lt.prune_model(net, torch.randn(64, 16), sparsity=0.5, method="sparsegpt",
                            schedule="parallel", executor="serial", allocation="uniform",
                            vs_dense=False)
    held = int((net[0].weight != 0).sum())
    assert report.layers[0].nnz == held
    assert report.layers[0].sparsity == 1 - held / 256


@pytest.mark.parametrize("shape", [(64, 9), (64, 7), (3, 5)])
def test_a_batch_of_the_wrong_width_is_refused_by_the_cascade_frontier(shape):
    """The cascade's frontier cache hands the first layer the raw batches without running the
    model: a 64 x 9 batch was re-cut into 72 rows of 8 and pruned on, (3, 5) raised a raw
    RuntimeError. Both schedules now name the layer and the shapes, and nothing changes."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before = [p.detach().clone() for p in net.parameters()]
    for schedule in ("cascade", "parallel"):
        with pytest.raises(InvalidInputError, match=r"does not fit the model.*layer 0"):
            lt.prune_model(net, torch.randn(*shape), sparsity={"0": 0.5}, method="sparsegpt",
                           schedule=schedule, executor="serial")
    for p, q in zip(net.parameters(), before, strict=True):
        assert torch.equal(p, q)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    with pytest.raises(InvalidInputError, match=r"layer 0: its input has shape \(8, 2, 10, 10"):
        lt.prune_model(conv, torch.randn(8, 2, 10, 10), sparsity={"0": 0.5},
                       method="sparsegpt", executor="serial")
