"""Bad input to the training-time companions: clear InvalidInputError messages."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import layertrim as lt  # noqa: E402
from layertrim.errors import InvalidInputError  # noqa: E402


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(16, 6, generator=g), torch.randint(0, 2, (16,), generator=g)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, [(X, y)]


def test_mask_shape_mismatch(setup):
    model, loader = setup
    with pytest.raises(InvalidInputError, match=r"mask of shape \(6, 8\).*\(8, 6\)"):
        lt.finetune(model, loader, {"0": torch.ones(6, 8, dtype=torch.bool)}, progress=False)


def test_mask_unknown_layer_and_values(setup):
    model, loader = setup
    with pytest.raises(InvalidInputError, match="not a layer"):
        lt.finetune(model, loader, {"nope": torch.ones(8, 6)}, progress=False)
    with pytest.raises(InvalidInputError, match="0/1"):
        lt.finetune(model, loader, {"0": torch.full((8, 6), 0.5)}, progress=False)


def test_unknown_criterion(setup):
    model, loader = setup
    with pytest.raises(InvalidInputError, match="unknown criterion 'l2'"):
        lt.prune_while_training(model, loader, fraction=0.5, criterion="l2", progress=False)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "half", None])
def test_fraction_outside_unit_interval(setup, fraction):
    model, loader = setup
    with pytest.raises(InvalidInputError, match=r"fraction in \(0, 1\)"):
        lt.prune_while_training(model, loader, fraction=fraction, progress=False)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, 2])
def test_diff_threshold_target_outside_unit_interval(setup, sparsity):
    model, loader = setup
    with pytest.raises(InvalidInputError, match=r"fraction in \(0, 1\)"):
        lt.diff_threshold(model, loader, sparsity=sparsity, progress=False)


@pytest.mark.parametrize("beta", [(10.0, 5.0), (1.0, 1.0), (1.0, 5.0, 3.0)])
def test_beta_not_increasing(setup, beta):
    model, loader = setup
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        lt.diff_threshold(model, loader, beta=beta, progress=False)


@pytest.mark.parametrize("beta", [(5.0,), (0.0, 1.0), "ab"])
def test_beta_malformed(setup, beta):
    model, loader = setup
    with pytest.raises(InvalidInputError, match="beta"):
        lt.diff_threshold(model, loader, beta=beta, progress=False)


def test_other_bad_arguments(setup):
    model, loader = setup
    with pytest.raises(InvalidInputError, match="optimizer"):
        lt.finetune(model, loader, optimizer="rmsprop", progress=False)
    with pytest.raises(InvalidInputError, match="epochs"):
        lt.finetune(model, loader, epochs=0, progress=False)
    with pytest.raises(InvalidInputError, match="last layer"):
        lt.prune_while_training(model, loader, fraction=0.5, layers=["2"], progress=False)
    with pytest.raises(InvalidInputError, match="first_prune <= last_prune"):
        lt.prune_while_training(model, loader, fraction=0.5, epochs=1, first_prune=2,
                                progress=False)
    with pytest.raises(InvalidInputError, match=r"\(x, y\)"):
        lt.finetune(model, [torch.randn(4, 6)], progress=False)
    with pytest.raises(InvalidInputError, match="torch.nn.Module"):
        lt.finetune("model", loader, progress=False)


@pytest.mark.parametrize("kw,msg", [({"lr": "0.1"}, "lr must be a finite number > 0"),
                                    ({"lr": True}, "lr"), ({"lr": float("nan")}, "lr"),
                                    ({"weight_decay": -1.0}, "weight_decay must be a finite "
                                                             "number >= 0")])
def test_optimizer_settings_are_numbers(kw, msg):
    """A numeric string or a bool is a mistake, not a learning rate."""
    from layertrim.adapters.training import make_optimizer

    params = [torch.nn.Parameter(torch.zeros(2))]
    args = {"optimizer": "sgd", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.0, **kw}
    with pytest.raises(InvalidInputError, match=msg):
        make_optimizer(params, args.pop("optimizer"), **args)


def test_prune_while_training_refuses_before_training(setup):
    model, loader = setup[0], setup[1]
    w = model[0].weight.detach().clone()
    for kw, msg in (({"layers": ["0", "0"]}, "twice"), ({"seed": "1"}, "seed must be")):
        with pytest.raises(InvalidInputError, match=msg):
            lt.prune_while_training(model, loader, fraction=0.5, epochs=2, progress=False, **kw)
    assert torch.equal(model[0].weight, w)
