"""Whole-model pruning on models and options off the main road: shared modules, Sequential
subclasses, frozen submodules, computed weights, pre-existing zeros, seeded solvers, N:M with
the default allocation, OWL's budget, and a foreign checkpoint directory."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

import layertrim as lt
from layertrim.adapters.torch import collect_grams, find_layers
from layertrim.errors import InvalidInputError
from layertrim.layerwise.allocate import owl_allocation
from layertrim.layerwise.checkpoint import Checkpoint


def mlp(relu=None, seed=0, cls=nn.Sequential):
    torch.manual_seed(seed)
    a, b = (relu, relu) if relu is not None else (nn.ReLU(), nn.ReLU())
    return cls(nn.Linear(12, 16), a, nn.Linear(16, 16), b, nn.Linear(16, 4))


def data(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(40, 12, generator=g) for _ in range(3)]


def weights(model):
    return [la.module.weight.detach().clone() for la in find_layers(model)]


class Sub(nn.Sequential):  # a subclass with its own forward: slicing it would call this
    def forward(self, x):
        return super().forward(x) * 2


@pytest.mark.parametrize("make", [lambda: mlp(relu=nn.ReLU()), lambda: mlp(cls=Sub)])
def test_cascade_frontier_only_where_slicing_is_faithful(make):
    """A shared ReLU instance (listed once by named_children) or a Sequential subclass must not
    take the frontier shortcut: the result equals the full-pass cascade."""
    a, b = make(), make()
    lt.prune_model(a, data(), sparsity=0.6, method="sparsegpt", executor="serial")
    lt.prune_model(b, data(), sparsity=0.6, method="sparsegpt", executor="serial",
                   frontier=False)
    for wa, wb in zip(weights(a), weights(b), strict=True):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)


@pytest.mark.parametrize("frontier", [True, False])
def test_training_flags_are_restored(frontier):
    model = mlp()
    model.train()
    model[1].eval()  # e.g. a frozen submodule
    lt.prune_model(model, data(), sparsity=0.5, method="magnitude", executor="serial",
                   frontier=frontier)
    assert model.training and model[0].training and not model[1].training
    collect_grams(model, find_layers(model), data())
    assert model.training and not model[1].training


def test_a_module_called_twice_cannot_pair_cascade_statistics():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 12)
            self.out = nn.Linear(12, 4)

        def forward(self, x):
            return self.out(torch.relu(self.fc(torch.relu(self.fc(x)))))

    torch.manual_seed(0)
    model = Twice()
    before = weights(model)
    with pytest.raises(InvalidInputError, match="fc runs more than once"):
        lt.prune_model(model, data(), sparsity=0.5, method="sparsegpt", executor="serial")
    assert all(torch.equal(x, y) for x, y in zip(before, weights(model), strict=True))
    lt.prune_model(model, data(), sparsity=0.5, method="sparsegpt", executor="serial",
                   schedule="parallel")  # each call is a sample there: fine


def test_hooks_are_removed_when_calibration_fails_early():
    model, other = mlp(), nn.Sequential(nn.Linear(12, 4))
    with pytest.raises(InvalidInputError, match="no module 2"):
        collect_grams(model, find_layers(model), data(), reference=other)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model(data()[0])


def test_computed_weights_are_refused():
    masked = mlp()
    prune.l1_unstructured(masked[0], "weight", amount=0.5)
    with pytest.raises(InvalidInputError, match="layer 0: its weight is computed"):
        lt.prune_model(masked, data(), sparsity=0.5, method="magnitude", executor="serial")

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    para = mlp()
    parametrize.register_parametrization(para[2], "weight", Double())
    with pytest.raises(InvalidInputError, match="layer 2: its weight is computed"):
        lt.prune_model(para, data(), sparsity=0.5, method="magnitude", executor="serial")


def test_report_counts_the_zeros_written_including_old_ones():
    model = mlp()
    with torch.no_grad():
        model[2].weight[:, :11] = 0  # about 70% zero already
    report = lt.prune_model(model, data(), sparsity=0.5, method="sparsegpt",
                            schedule="parallel", executor="serial", allocation="uniform")
    for rec, la in zip(report.layers, find_layers(model), strict=True):
        assert rec.nnz == int((la.module.weight != 0).sum())
    assert report.layers[1].sparsity > 0.6


def test_the_seed_reaches_a_seeded_solver():
    masks = []
    for seed in (1, 2, 1):
        model = mlp()
        lt.prune_model(model, data(), sparsity=0.5, method="random", executor="serial",
                       allocation="uniform", seed=seed)
        masks.append([w != 0 for w in weights(model)])
    assert all(torch.equal(a, b) for a, b in zip(masks[0], masks[2], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(masks[0], masks[1], strict=True))


def test_nm_pattern_with_the_default_allocation():
    model = mlp()
    report = lt.prune_model(model, data(), sparsity=0.5, method="sparsegpt", pattern="2:4",
                            executor="serial")
    assert report.sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("target", [0.0, 0.3, 0.9, 0.985])
def test_owl_hits_its_budget_after_clipping(target):
    rng = np.random.default_rng(0)
    scores = [np.abs(rng.standard_cauchy((20, 30))) for _ in range(3)] + [
        np.abs(rng.standard_normal((5, 400)))]
    s = owl_allocation(scores, target)
    sizes = np.array([x.size for x in scores])
    assert np.all((s >= 0) & (s <= 0.99))
    assert float(np.sum(s * sizes) / sizes.sum()) == pytest.approx(target, abs=1e-9)


def test_a_foreign_directory_is_not_taken_for_a_checkpoint(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(InvalidInputError, match="not a layertrim checkpoint"):
        Checkpoint(tmp_path).open({"model": "x"})
    assert (tmp_path / "mine.txt").read_text() == "keep"


def test_a_layer_that_never_runs_is_named():
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(12, 4)
            self.unused = nn.Linear(4, 4)  # e.g. a head not used in this forward

        def forward(self, x):
            return self.body(x)

    with pytest.raises(InvalidInputError, match="layer unused never ran"):
        lt.prune_model(Head(), data(), sparsity=0.5, method="magnitude", executor="serial")
    lt.prune_model(Head(), data(), sparsity=0.5, method="magnitude", executor="serial",
                   exclude=["unused"])


def test_an_empty_calibration_tensor_is_empty():
    with pytest.raises(InvalidInputError, match="calibration data is empty"):
        collect_grams(mlp(), find_layers(mlp()), torch.zeros(0, 12))


def test_resume_refuses_another_architecture_with_the_same_state_dict(tmp_path):
    """Tanh instead of ReLU leaves the state_dict as it was but changes every Gram after the
    first layer: a checkpoint of the ReLU model must not be resumed into it."""
    ck = tmp_path / "ck"
    lt.prune_model(mlp(), data(), sparsity=0.5, method="magnitude", executor="serial",
                   allocation="uniform", checkpoint=ck)
    other = mlp(relu=nn.Tanh())
    assert other.state_dict().keys() == mlp().state_dict().keys()
    before = weights(other)
    with pytest.raises(InvalidInputError, match="architecture"):
        lt.prune_model(other, data(), sparsity=0.5, method="magnitude", executor="serial",
                       allocation="uniform", resume=ck)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(other), strict=True))
    # the same architecture resumes (and finds every layer done)
    same = mlp()
    rep = lt.prune_model(same, data(), sparsity=0.5, method="magnitude", executor="serial",
                         allocation="uniform", resume=ck)
    assert rep.sparsity == pytest.approx(0.5, abs=0.01)
    assert all(r.resumed for r in rep.layers)


def test_a_checkpoint_of_another_format_is_refused_by_its_format(tmp_path):
    import json

    ck = tmp_path / "ck"
    lt.prune_model(mlp(), data(), sparsity=0.5, method="magnitude", executor="serial",
                   allocation="uniform", checkpoint=ck)
    manifest = json.loads((ck / "manifest.json").read_text())
    manifest["format"] = 1  # as an older layertrim wrote it (another model hash)
    (ck / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InvalidInputError, match="written in format 1"):
        lt.prune_model(mlp(), data(), sparsity=0.5, method="magnitude", executor="serial",
                       allocation="uniform", resume=ck)


@pytest.mark.parametrize("schedule", ["cascade", "parallel"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_batches_take_the_models_dtype(schedule, dtype):
    """A float64 or bfloat16 model calibrated with float32 batches (what the Python API used
    to refuse with a dtype mismatch) prunes exactly as with batches already in its dtype, as
    the CLI does by converting them."""
    got, want = mlp(seed=3).to(dtype), mlp(seed=3).to(dtype)
    x = data(3)
    lt.prune_model(got, x, sparsity=0.5, method="sparsegpt", schedule=schedule,
                   executor="serial")
    lt.prune_model(want, [b.to(dtype) for b in x], sparsity=0.5, method="sparsegpt",
                   schedule=schedule, executor="serial")
    for a, b in zip(weights(got), weights(want), strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (weights(got)[0] == 0).float().mean() > 0.3
