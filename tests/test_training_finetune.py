"""Masked fine-tuning keeps pruned weights exactly zero, whatever the optimizer."""

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import layertrim as lt  # noqa: E402
from layertrim.adapters.finetune import current_masks  # noqa: E402


def _data(n=64, d=12, classes=3, seed=0, batch=16):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return list(zip(X.split(batch), y.split(batch), strict=True)), (X, y)


def _pruned_mlp(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        for m in (model[0], model[2]):
            m.weight.mul_(torch.rand_like(m.weight) > 0.6)
    return model


@pytest.mark.parametrize("optimizer,opts", [
    ("sgd", {"momentum": 0.9, "weight_decay": 1e-2, "lr": 0.1}),
    ("adam", {"weight_decay": 1e-2, "lr": 1e-2}),
    ("adamw", {"weight_decay": 0.1, "lr": 1e-2}),
])
def test_masks_survive_optimizer_steps(optimizer, opts):
    loader, val = _data()
    model = _pruned_mlp()
    masks = current_masks(model)
    before = {k: v.clone() for k, v in masks.items()}
    rep = lt.finetune(model, loader, epochs=3, optimizer=optimizer, val=val, progress=False,
                      **opts)
    for name, m in before.items():
        w = model.get_submodule(name).weight
        assert bool((w[~m] == 0).all()), f"{name}: a pruned weight moved"
        assert bool((w[m] != 0).any())
    assert len(rep.epoch_loss) == 3 and len(rep.val_accuracy) == 3
    assert rep.details["masked_weights"] == sum(int((~m).sum()) for m in before.values())


def test_explicit_masks_take_effect_and_others_train():
    loader, _ = _data()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    mask = torch.rand(16, 12) > 0.5
    w2 = model[2].weight.detach().clone()
    lt.finetune(model, loader, {"0": mask}, epochs=2, optimizer="sgd", lr=0.1,
                weight_decay=1e-3, progress=False)
    assert bool((model[0].weight[~mask] == 0).all())
    assert not torch.equal(model[2].weight.detach(), w2)  # unmasked layer trained


def test_pruned_model_roundtrip_with_prune_model():
    torch.manual_seed(0)
    loader, _ = _data(n=96, batch=32)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    lt.prune_model(model, [x for x, _ in loader], sparsity=0.7, method="magnitude",
                   executor="serial")
    zeros = {k: ~v for k, v in current_masks(model).items()}
    lt.finetune(model, loader, epochs=2, lr=1e-2, weight_decay=1e-2, progress=False)
    for name, z in zeros.items():
        assert bool((model.get_submodule(name).weight[z] == 0).all())


def test_finetune_keeps_masks_on_the_prune_convention():
    """prune_model(mask_convention=True) leaves weight = weight_orig * weight_mask, rebuilt
    before every forward: explicit masks now go into weight_mask and are kept (they were
    silently ignored: 31 masked weights came back nonzero)."""
    from layertrim.adapters.torch import apply_masks, find_layers

    loader, (X, _) = _data()
    model = _pruned_mlp()
    apply_masks(find_layers(model), {"0": torch.rand(16, 12) > 0.5})
    strict = torch.zeros(16, 12, dtype=torch.bool)
    strict[:, :4] = True
    lt.finetune(model, loader, masks={"0": strict}, epochs=2, lr=1e-2, progress=False)
    model(X)  # the forward pre-hook rebuilds weight from weight_orig and weight_mask
    assert int((model[0].weight[~strict] != 0).sum()) == 0
    assert int((model[0].weight[strict] != 0).sum()) > 0


def test_modes_are_restored_and_frozen_submodules_stay_frozen():
    """A model in train mode with a BatchNorm the user froze: the BN's running statistics do
    not move, and every flag is as it was afterwards (the model came back in eval mode, and
    the frozen BN's running mean had moved by 2.8)."""
    loader, _ = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    model.train()
    model[1].eval()
    before = model[1].running_mean.clone()
    lt.finetune(model, loader, epochs=1, progress=False, val=(_data()[1]))
    assert torch.equal(model[1].running_mean, before)
    assert model.training and model[0].training and not model[1].training
    model.eval()  # a model handed over in eval mode trains everything, then is eval again
    lt.finetune(model, loader, epochs=1, progress=False)
    assert not model[1].running_mean.equal(before)
    assert not any(m.training for m in model.modules())


def test_bad_loader_and_val_are_refused_before_training():
    """Refused before any tensor is touched: explicit masks would otherwise already have
    zeroed weights when the error came."""
    loader, (X, y) = _data()
    model = _pruned_mlp()
    w = model[0].weight.detach().clone()
    strict = {"0": torch.zeros(16, 12, dtype=torch.bool)}
    with pytest.raises(lt.InvalidInputError, match="val: X has 64 rows but y has 10"):
        lt.finetune(model, loader, masks=strict, val=(X, y[:10]), progress=False)
    with pytest.raises(lt.InvalidInputError, match="one-shot iterator"):
        lt.finetune(model, iter(loader), masks=strict, epochs=2, progress=False)
    assert torch.equal(model[0].weight, w)  # nothing was changed


def test_default_masks_of_a_reloaded_prune_convention_model():
    """After load_state_dict, a prune-convention module's ``weight`` is stale (rebuilt only in
    the forward pre-hook); the default masks come from weight_mask, so the loaded zeros stay
    (taking them from the stale dense weight revived every pruned weight)."""
    from torch.nn.utils import prune

    loader, (X, _) = _data()
    src = _pruned_mlp()
    prune.custom_from_mask(src[0], "weight", src[0].weight.detach() != 0)
    zeros = ~src[0].weight_mask.bool()
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    prune.identity(model[0], "weight")
    model.load_state_dict(src.state_dict())
    lt.finetune(model, loader, epochs=1, lr=1e-2, progress=False)
    model(X)
    assert int(zeros.sum()) > 0 and int((model[0].weight[zeros] != 0).sum()) == 0


def test_a_dataloader_is_not_probed():
    """check_loader leaves torch's global RNG alone: iter(DataLoader) draws a base seed from
    it (and starts workers), which changed seeded runs."""
    from torch.utils.data import DataLoader, TensorDataset

    from layertrim.adapters.training import check_loader

    dl = DataLoader(TensorDataset(torch.randn(8, 2), torch.zeros(8)), shuffle=True)
    torch.manual_seed(0)
    want = torch.rand(1)
    torch.manual_seed(0)
    check_loader(dl, 2)
    assert torch.equal(torch.rand(1), want)


class _TwoInputs(nn.Module):
    """model(x, mask): the MLP of _pruned_mlp with a per-row mask on its hidden layer."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x, mask):
        return self.body[2](self.body[1](self.body[0](x)) * mask[:, None])


def test_a_model_of_several_inputs_is_pruned_then_finetuned_from_inputs_batches():
    """Inputs(x, mask) batches go through the whole path, calibration to fine-tuning and
    validation, and train exactly as the same network given a one-input wrapper: the loss
    curve, the accuracies and the weights are equal; dict batches of keyword inputs too."""
    from layertrim.adapters.torch import Inputs

    loader, (X, y) = _data()
    g = torch.Generator().manual_seed(3)
    masks = [(torch.rand(len(xb), generator=g) > 0.2).float() for xb, _ in loader]
    M = torch.cat(masks)
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    a = _TwoInputs(body)
    calib = [Inputs(xb, m) for (xb, _), m in zip(loader, masks, strict=True)]
    rep = lt.prune_model(a, calib, sparsity=0.5, method="sparsegpt", executor="serial")
    assert rep.layers and (a.body[0].weight == 0).float().mean() > 0.2

    class Joined(nn.Module):  # the same network, its two inputs in one tensor
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, xm):
            return self.net(xm[:, :-1], xm[:, -1])

    import copy

    b = Joined(copy.deepcopy(a))
    c = copy.deepcopy(a)
    pairs_a = [(Inputs(xb, m), yb) for (xb, yb), m in zip(loader, masks, strict=True)]
    pairs_b = [(torch.cat([xb, m[:, None]], 1), yb)
               for (xb, yb), m in zip(loader, masks, strict=True)]
    pairs_c = [({"x": xb, "mask": m}, yb) for (xb, yb), m in zip(loader, masks, strict=True)]
    opts = dict(epochs=2, optimizer="sgd", lr=0.1, progress=False)
    torch.manual_seed(5)
    ra = lt.finetune(a, pairs_a, val=[(Inputs(X, M), y)], **opts)
    torch.manual_seed(5)
    rb = lt.finetune(b, pairs_b, val=(torch.cat([X, M[:, None]], 1), y), **opts)
    torch.manual_seed(5)
    rc = lt.finetune(c, pairs_c, val=[({"x": X, "mask": M}, y)], **opts)
    assert ra.epoch_loss == rb.epoch_loss == rc.epoch_loss
    assert ra.val_accuracy == rb.val_accuracy == rc.val_accuracy
    for p, q, r in zip(a.parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(p, q) and torch.equal(p, r)
    assert bool((a.body[0].weight[current_masks(b.net)["body.0"] == 0] == 0).all())
    with pytest.raises(lt.InvalidInputError, match="an Inputs"):
        lt.finetune(a, [("x", y)], progress=False)


def test_an_empty_loader_is_refused_before_explicit_masks_zero_anything():
    loader, _ = _data()
    model = _pruned_mlp()
    w = model[0].weight.detach().clone()
    strict = {"0": torch.zeros(16, 12, dtype=torch.bool)}
    with pytest.raises(lt.InvalidInputError, match="no batches"):
        lt.finetune(model, [], masks=strict, progress=False)
    assert torch.equal(model[0].weight, w)
