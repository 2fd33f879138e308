"""Differentiable thresholds (after Manessi et al. 2018): gradients reach t, hard zeros at the
end, an exact global target when asked."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

import layertrim as lt  # noqa: E402
from layertrim.adapters.diff_threshold import SoftThreshold, beta_at  # noqa: E402


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(64, 12, generator=g), torch.randint(0, 3, (64,), generator=g)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, list(zip(X.split(16), y.split(16), strict=True)), X, y


def test_thresholds_receive_gradients():
    model, _, X, y = _setup()
    gate = SoftThreshold(float(model[0].weight.detach().std()), 0.5)
    gate.beta = 5.0
    parametrize.register_parametrization(model[0], "weight", gate)
    loss = nn.functional.cross_entropy(model(X), y) + 1e-3 * torch.exp(-gate.t ** 2)
    loss.backward()
    assert gate.t.grad is not None and float(gate.t.grad.abs()) > 0


def test_thresholds_move_and_weights_are_hard_zero():
    model, loader, X, _ = _setup()
    rep = lt.diff_threshold(model, loader, epochs=2, beta=(1.0, 10.0, 50.0), lam=1e-2,
                            t0=0.3, progress=False)
    ts = rep.details["thresholds"]
    assert set(ts) == {"0", "2"}
    for name, tau in ts.items():
        w = model.get_submodule(name).weight
        assert not parametrize.is_parametrized(model.get_submodule(name))
        assert bool((w.abs()[w != 0] > tau).all())
        assert float((w == 0).float().mean()) > 0
    assert 0 < rep.sparsity < 1
    assert model(X).shape == (64, 3)


def test_exact_global_target():
    model, loader, _, _ = _setup(1)
    rep = lt.diff_threshold(model, loader, epochs=1, sparsity=0.8, progress=False)
    n = sum(m.weight.numel() for m in (model[0], model[2]))
    zeros = sum(int((m.weight == 0).sum()) for m in (model[0], model[2]))
    assert zeros == round(0.8 * n)
    assert rep.sparsity == pytest.approx(zeros / n)


def test_beta_schedule_interpolates_increasingly():
    knots = [1.0, 10.0, 100.0]
    vals = [beta_at(knots, p / 10) for p in range(11)]
    assert vals[0] == pytest.approx(1.0) and vals[-1] == pytest.approx(100.0)
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))


def test_each_step_trains_with_its_own_beta_and_the_last_knot_is_reached():
    """Step k's forward pass uses the schedule's value at k (it used step k-1's, starting at
    1.0, and never the last knot), and the reported final accuracy is the returned model's."""
    model, loader, X, y = _setup()
    seen = []
    model[0].register_forward_pre_hook(  # during training only: the gate is gone afterwards
        lambda m, _i: seen.append(m.parametrizations.weight[0].beta)
        if m.training and hasattr(m, "parametrizations") else None)
    rep = lt.diff_threshold(model, loader, epochs=1, beta=(2.0, 100.0), lam=1e-2,
                            sparsity=0.5, progress=False, val=(X, y))
    want = [beta_at((2.0, 100.0), k / 3) for k in range(4)]
    assert seen == pytest.approx(want) and seen[-1] == pytest.approx(100.0)
    with torch.no_grad():
        acc = float((model(X).argmax(1) == y).float().mean())
    assert rep.details["final_val_accuracy"] == pytest.approx(acc)


def test_computed_weights_are_refused():
    from layertrim.adapters.torch import apply_masks, find_layers

    model, loader, _, _ = _setup()
    apply_masks(find_layers(model), {"0": torch.rand(16, 12) > 0.5})
    with pytest.raises(lt.InvalidInputError, match="weight is computed"):
        lt.diff_threshold(model, loader, progress=False)
    with pytest.raises(lt.InvalidInputError, match="weight is computed"):
        lt.prune_while_training(model, loader, fraction=0.5, epochs=2, progress=False)


@pytest.mark.parametrize("bad,msg", [({"optimizer": "rms"}, "unknown optimizer"),
                                     ({"lr": -1.0}, "lr"), ({"threshold_lr": 0.0},
                                                            "threshold_lr")])
def test_bad_optimizer_settings_leave_the_model_untouched(bad, msg):
    """They were checked after the soft gates were registered, outside the cleanup: the model
    stayed parametrized (its outputs changed) and a retry was refused."""
    model, loader, X, _ = _setup()
    with torch.no_grad():
        before = model(X)
    with pytest.raises(lt.InvalidInputError, match=msg):
        lt.diff_threshold(model, loader, epochs=1, progress=False, **bad)
    assert not parametrize.is_parametrized(model[0])
    with torch.no_grad():
        assert torch.equal(model(X), before)


def test_validation_labels_as_a_column_count_once():
    """(N, 1) labels broadcast against argmax(1) to N x N: accuracy came out at 24.6."""
    from layertrim.adapters.training import accuracy

    model, loader, X, y = _setup()
    a = accuracy(model, (X, y))
    assert accuracy(model, (X, y[:, None])) == a
    assert accuracy(model, [(X, y[:, None])]) == a
    assert 0 <= a <= 1
    with pytest.raises(lt.InvalidInputError, match="vector of class indices"):
        accuracy(model, (X, torch.zeros(64, 2, dtype=torch.long)))
    with pytest.raises(lt.InvalidInputError, match="vector of class indices"):
        lt.finetune(model, loader, val=(X, torch.zeros(64, 2, dtype=torch.long)),
                    progress=False)
