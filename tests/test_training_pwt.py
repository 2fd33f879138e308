"""Pruning filters while training (Roy et al. 2020): exact counts and a faithful shrink."""

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import layertrim as lt  # noqa: E402


def _images(n=48, seed=0, batch=16):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 1, 12, 12, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return list(zip(X.split(batch), y.split(batch), strict=True)), X


def _cnn(bn=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), *([nn.BatchNorm2d(8)] if bn else []), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 10, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(10 * 3 * 3, 4))


@pytest.mark.parametrize("criterion,bn", [("l1", False), ("l1", True), ("activation", False),
                                           ("random", True)])
def test_exact_filter_count_and_shrunk_equals_masked(criterion, bn):
    loader, X = _images()
    model = _cnn(bn)
    masked = copy.deepcopy(model)
    rep = lt.prune_while_training(masked, loader, fraction=0.6, criterion=criterion, epochs=2,
                                  interval=1, shrink=False, progress=False)
    shrunk = copy.deepcopy(model)
    rep2 = lt.prune_while_training(shrunk, loader, fraction=0.6, criterion=criterion, epochs=2,
                                   interval=1, shrink=True, progress=False)
    convs = [m for m in shrunk if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8 - round(0.6 * 8), 10 - round(0.6 * 10)]
    assert rep.details["filters"] == rep2.details["filters"]
    assert rep.details["kept"] == rep2.details["kept"]
    assert shrunk[-1].in_features == convs[-1].out_channels * 9
    masked.eval()
    shrunk.eval()
    with torch.no_grad():
        torch.testing.assert_close(shrunk(X), masked(X), rtol=1e-5, atol=1e-5)


def test_linear_neurons_and_events():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 10, generator=g), torch.randint(0, 3, (40,), generator=g)
    loader = list(zip(X.split(10), y.split(10), strict=True))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 7), nn.ReLU(),
                          nn.Linear(7, 3))
    rep = lt.prune_while_training(model, loader, fraction=0.75, epochs=4, interval=2,
                                  progress=False)
    assert rep.details["events"] == [1, 3]  # every 2nd epoch, up to epochs - 1
    assert (model[0].out_features, model[2].out_features) == (5, 2)
    assert model[2].in_features == 5 and model[4].in_features == 2
    assert model(X).shape == (40, 3)


def test_training_sees_the_kept_network_behind_a_batchnorm():
    """A dropped filter's BatchNorm still outputs its shift: the next layer's inputs from the
    dropped filters are held at zero during training too, not only at the end."""
    loader, _ = _images()
    model = _cnn(bn=True)
    seen = []
    model[4].register_forward_pre_hook(
        lambda m, _i: seen.append(m.weight.detach().clone()) if m.training else None)
    rep = lt.prune_while_training(model, loader, fraction=0.5, epochs=2, shrink=False,
                                  progress=False)
    dropped = sorted(set(range(8)) - set(rep.details["kept"]["0"]))
    last_epoch = seen[-len(loader):]  # the epoch after the last pruning event
    assert len(dropped) == 4 and all((w[:, dropped] == 0).all() for w in last_epoch)


def test_activation_criterion_counts_a_frozen_block():
    """A train-mode model whose first block the user froze with eval(): its activations are
    training samples all the same (only no_grad validation passes are skipped). The hook
    keyed on module.training recorded nothing there and failed at the first event."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[0].eval()
    rep = lt.prune_while_training(model, list(zip(X.split(16), y.split(16), strict=True)),
                                  fraction=0.5, criterion="activation", epochs=2,
                                  progress=False, val=(X, y))
    assert rep.details["filters"]["0"] == (8, 16)
    assert model.training and not model[0].training  # the flags as they came


def test_unsupported_pairs_are_refused_before_training():
    """A grouped convolution, or a BatchNorm of another size, was refused only at the first
    pruning event or at the end, after training had changed the weights."""
    loader, _ = _images()
    grouped = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2),
                            nn.ReLU(), nn.Conv2d(8, 4, 2), nn.Flatten())
    odd_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.BatchNorm1d(400),
                           nn.Linear(400, 4))
    for model, layers, msg in ((grouped, ["2"], "grouped"), (odd_bn, ["0"], "400 features")):
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(lt.InvalidInputError, match=msg):
            lt.prune_while_training(model, loader, fraction=0.5, layers=layers, epochs=2,
                                    progress=False)
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k])
    with pytest.raises(lt.InvalidInputError, match="unknown optimizer"):
        lt.prune_while_training(_cnn(), loader, fraction=0.5, optimizer="rms", progress=False)


def test_activation_scores_a_linear_on_sequences_by_neuron():
    """On a (B, T, F) input a Linear's neurons are the last axis: the hook took axis 1 (time),
    which raised a shape error for T = 5 and silently ranked time steps for T = 8."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(10, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))).mean(1)

    for steps in (5, 8):
        torch.manual_seed(0)
        model = Seq()
        with torch.no_grad():  # neurons 0-3 fire strongly, 4-7 barely
            model.a.weight.mul_(0.01)
            model.a.bias.copy_(torch.tensor([5.0, 4, 3, 2, 0.01, 0.02, 0.03, 0.04]))
        g = torch.Generator().manual_seed(1)
        loader = [(torch.randn(16, steps, 10, generator=g), torch.randint(0, 3, (16,),
                                                                          generator=g))
                  for _ in range(3)]
        rep = lt.prune_while_training(model, loader, fraction=0.5, criterion="activation",
                                      layers=["a"], epochs=1, lr=1e-9, shrink=False,
                                      progress=False)
        assert rep.details["kept"]["a"] == [0, 1, 2, 3]


def test_a_model_with_a_skip_connection_is_left_masked_with_a_warning():
    """pairs_of takes the next layer in registration order: a skip connection adds channels
    the shrink had taken apart, and the shrunk model silently computed something else. Now
    the outputs are compared, and the masked model (right, at full size) is kept."""
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 8, 3, padding=1)
            self.c1 = nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 4)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            h = h + torch.relu(self.c1(h))
            return self.fc(h.mean((2, 3)))

    loader, X = _images()
    torch.manual_seed(0)
    model = Skip()
    with pytest.warns(UserWarning, match="not a chain"):
        rep = lt.prune_while_training(model, loader, fraction=0.5, epochs=2, progress=False)
    assert rep.details["shrunk"] is False
    assert model.stem.out_channels == 8 and model.c1.out_channels == 8  # full size
    assert int((model.stem.weight.flatten(1).abs().sum(1) == 0).sum()) == 4  # masked
