"""PyTorch adapter: layer discovery, streamed calibration Grams (checked against the module's
own forward), write-back and the torch.nn.utils.prune convention."""

import numpy as np
import pytest
import torch
from torch import nn

from layertrim.adapters.torch import (
    apply_masks,
    collect_grams,
    find_layers,
    write_back,
)
from layertrim.errors import InvalidInputError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
        self.c3 = nn.Conv2d(6, 4, 3, padding="same", padding_mode="reflect", bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x):  # x: (N, 3, 36)
        h = torch.relu(self.c1(x)).reshape(x.shape[0], 4, 6, 6)
        h = torch.relu(self.c2(h))
        h = self.bn(self.c3(h))
        return self.fc(h.flatten(1))


def make(seed=0):
    torch.manual_seed(seed)
    net = Net().double()
    calib = [torch.randn(7, 3, 36, dtype=torch.float64) for _ in range(3)]
    return net, calib


def test_find_layers_and_filters():
    net, _ = make()
    names = [la.name for la in find_layers(net)]
    assert names == ["c1", "c2", "c3", "fc"]
    assert [la.name for la in find_layers(net, include="c.")] == ["c1", "c2", "c3"]
    assert [la.name for la in find_layers(net, exclude=["fc", "c1"])] == ["c2", "c3"]
    c2 = find_layers(net, include="c2")[0]
    assert (c2.groups, c2.m, c2.d) == (2, 3, 2 * 9)
    with pytest.raises(InvalidInputError, match="no prunable layer.*prunable layers"):
        find_layers(net, include="nothing")
    with pytest.raises(InvalidInputError, match="pattern"):
        find_layers(net, include="(")
    with pytest.raises(InvalidInputError, match="nn.Module"):
        find_layers(np.ones(3))


def test_grams_reproduce_each_layers_output_change():
    """For any W', ||layer_W'(x) - layer_W(x)||^2 over the calibration set, computed by torch's
    own forward, must equal sum over groups of tr(dW_g H_g dW_g^T): an independent check of
    padding, stride, dilation, groups and the patch ordering."""
    net, calib = make()
    layers = find_layers(net)
    grams = collect_grams(net, layers, calib)
    inputs = {}
    hooks = [la.module.register_forward_hook(
        lambda mod, inp, out, name=la.name: inputs.setdefault(name, []).append(inp[0]))
        for la in layers]
    with torch.no_grad():
        for x in calib:
            net.eval()(x)
    for h in hooks:
        h.remove()
    rng = np.random.default_rng(1)
    for la in layers:
        dW = [rng.standard_normal((la.m, la.d)) for _ in range(la.groups)]
        expect = sum(np.trace(d @ G.H @ d.T) for d, G in zip(dW, grams[la.name], strict=True))
        mod = la.module
        saved = mod.weight.detach().clone()
        with torch.no_grad():
            before = [mod(x) for x in inputs[la.name]]
            for g in range(la.groups):
                write_back(la, g, la.weight(g) + dW[g], None)
            after = [mod(x) for x in inputs[la.name]]
            mod.weight.copy_(saved)
        got = sum(float(((a - b) ** 2).sum()) for a, b in zip(after, before, strict=True))
        assert got == pytest.approx(expect, rel=1e-9), la.name
        n_rows = grams[la.name][0].n
        assert all(G.n == n_rows for G in grams[la.name])


def test_max_rows_subsamples_and_training_mode_is_restored():
    net, calib = make()
    net.train()
    layers = find_layers(net, include="c2")
    full = collect_grams(net, layers, calib)["c2"][0]
    sub = collect_grams(net, layers, calib, max_rows=5)["c2"][0]
    assert sub.n == 5 * len(calib) < full.n
    assert net.training


def test_write_back_keeps_dtype_and_the_prune_convention():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Linear(6, 4)).to(torch.bfloat16)
    la = find_layers(lin)[0]
    W = la.weight()
    W[:, :3] = 0.0
    write_back(la, 0, W, la.bias())
    assert lin[0].weight.dtype == torch.bfloat16
    assert torch.all(lin[0].weight[:, :3] == 0)
    mask = lin[0].weight != 0
    apply_masks([la], {"0": mask})
    assert hasattr(lin[0], "weight_orig") and hasattr(lin[0], "weight_mask")
    with torch.no_grad():
        lin[0].weight_orig.fill_(1.0)  # a fine-tuning step moves the pruned weights ...
    x = torch.ones(2, 6, dtype=torch.bfloat16)
    out = lin(x)  # ... but the forward pre-hook masks them
    expect = (mask.float().sum(1) + lin[0].bias.float()).expand(2, 4)
    assert torch.allclose(out.float(), expect, atol=0.02)  # bfloat16 keeps ~3 digits
    torch.nn.utils.prune.remove(lin[0], "weight")
    assert torch.all(lin[0].weight[:, :3] == 0)


def test_bad_input():
    net, calib = make()
    layers = find_layers(net)
    with pytest.raises(InvalidInputError, match="empty"):
        collect_grams(net, layers, [])
    with pytest.raises(InvalidInputError, match="iterable"):
        collect_grams(net, layers, 3.0)
    with pytest.raises(InvalidInputError, match="tensor"):
        collect_grams(net, layers, [("not a tensor",)])
    with pytest.raises(InvalidInputError, match="max_rows"):
        collect_grams(net, layers, calib, max_rows=0)
    with pytest.raises(InvalidInputError, match="expected"):
        write_back(layers[0], 0, np.zeros((2, 2)), None)
    with pytest.raises(InvalidInputError, match="mask of shape"):
        apply_masks(layers, {"c1": torch.ones(2, 2, dtype=torch.bool)})


def test_float32_grams_match_exact_float64_sums():
    """With gram_dtype="float32", a float32 CPU model's Grams come from float32 products summed
    in float64, a chunk of GRAM_CHUNK rows at a time: they must match the exact (float64) sums
    of the same inputs to float32 accuracy, also when a batch spans several chunks."""
    import layertrim.adapters.torch_gram as lt_torch

    torch.manual_seed(3)
    net = Net()  # float32
    calib = [torch.rand(40, 3, 36) for _ in range(2)]
    inputs: dict[str, list] = {}
    layers = find_layers(net)
    hooks = [la.module.register_forward_hook(
        lambda mod, inp, out, name=la.name: inputs.setdefault(name, []).append(inp[0]))
        for la in layers]
    old = lt_torch.GRAM_CHUNK
    try:
        lt_torch.GRAM_CHUNK = 37  # several chunks per batch, one of them ragged
        grams = collect_grams(net, layers, calib, gram_dtype="float32")
        exact = collect_grams(net, layers, calib, gram_dtype="float64")
    finally:
        lt_torch.GRAM_CHUNK = old
        for h in hooks:
            h.remove()
    for la in layers:
        for g in range(la.groups):
            X = np.vstack([la.rows(x)[g].double().numpy() for x in inputs[la.name][:2]])
            G = grams[la.name][g]
            assert G.n == len(X)
            np.testing.assert_allclose(G.H, X.T @ X, rtol=1e-6, atol=1e-6 * np.abs(X.T @ X).max())
            np.testing.assert_allclose(G.sum, X.sum(0), rtol=0, atol=1e-6 * np.abs(X).sum())
            assert not np.array_equal(G.H, exact[la.name][g].H)  # float32 sums were used
            np.testing.assert_allclose(exact[la.name][g].H, X.T @ X, rtol=1e-12,
                                       atol=1e-12 * np.abs(X.T @ X).max())
    with pytest.raises(InvalidInputError, match="gram_dtype"):
        collect_grams(net, layers, calib, gram_dtype="float16")


def test_output_errors_split_by_group_for_batched_and_unbatched_inputs():
    """The cascade's 'vs dense' measurement: one group's damage is seen in that group alone,
    for a batch of images and for one unbatched image (C, H, W)."""
    from layertrim.adapters.torch import output_errors

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        model[0].weight[:2] = 0  # group 0's output channels lose everything
        model[0].bias[:2] = 0
    for x in (torch.randn(3, 4, 8, 6), torch.randn(4, 8, 6)):
        got = output_errors(model, ref, find_layers(model), x)["0"]
        assert got == pytest.approx([1.0, 0.0])
