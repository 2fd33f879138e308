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
