"""Physically shrinking torch layers gives the masked model's outputs."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from layertrim.adapters.torch_structured import mask_pair, shrink_pair
from layertrim.errors import InvalidInputError
from layertrim.solvers.coreset import coreset_prune


def _same(model, first, second, kept, x, bn=None, **kw):
    masked = mask_pair(copy.deepcopy(model), first, second, kept, **kw)
    small = shrink_pair(copy.deepcopy(model), first, second, kept, bn=bn, **kw)
    with torch.no_grad():
        ref, out = masked(x), small(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    return small


def _mlp(bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(12, 20)] + ([nn.BatchNorm1d(20)] if bn else []) + [
        nn.ReLU(), nn.Linear(20, 7), nn.ReLU(), nn.Linear(7, 3)]
    m = nn.Sequential(*layers).eval()
    if bn:
        m[1].running_mean.uniform_(-1, 1)
        m[1].running_var.uniform_(0.5, 2)
        m[1].weight.data.uniform_(0.5, 1.5)
        m[1].bias.data.uniform_(-1, 1)
    return m


def test_linear_pair_with_coreset_reweighting_and_refit():
    model = _mlp()
    x = torch.randn(64, 12)
    W1, b1 = model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy()
    W2, b2 = model[2].weight.detach().double().numpy(), model[2].bias.detach().double().numpy()
    A = np.maximum(x.double().numpy() @ W1.T + b1, 0)
    r = coreset_prune(W1, b1, W2, b2, A=A, variant="data-dependent", keep=9)
    small = _same(model, "0", "2", r.kept, x, scale=r.scale)
    assert small[0].weight.shape == (9, 12) and small[2].weight.shape == (7, 9)
    rr = coreset_prune(W1, b1, W2, b2, A=A, variant="data-dependent", keep=9, refit=True)
    _same(model, "0", "2", rr.kept, x, W2=rr.W2, b2=rr.b2)
    # the shrunk layer l+1 computes exactly the coreset's rewired pre-activations
    small = shrink_pair(copy.deepcopy(model), "0", "2", r.kept, scale=r.scale)
    with torch.no_grad():
        z = small[2](small[1](small[0](x))).double().numpy()
    np.testing.assert_allclose(z, A[:, r.kept] @ r.W2.T + b2, atol=1e-4)


def test_batchnorm_between_is_sliced():
    model = _mlp(bn=True)
    small = _same(model, "0", "3", np.array([1, 4, 5, 11, 19]), torch.randn(32, 12), bn="1")
    assert small[1].num_features == 5 and small[1].running_mean.shape == (5,)


def test_conv_bn_conv_and_conv_flatten_linear():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 6, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 4 * 4, 5)).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].bias.data.uniform_(-1, 1)
    x = torch.randn(4, 3, 6, 6)
    small = _same(model, "0", "3", np.array([0, 2, 3, 7]), x, bn="1",
                  scale=np.array([1.0, 0.5, 2.0, 1.5]))
    assert small[0].out_channels == 4 and small[3].in_channels == 4
    small = _same(model, "3", "6", np.array([1, 5]), x)
    assert small[6].in_features == 2 * 16


def test_shrink_rejects_bad_input():
    model = _mlp()
    with pytest.raises(InvalidInputError, match="keeping 0"):
        shrink_pair(model, "0", "2", np.array([], dtype=int))
    with pytest.raises(InvalidInputError, match="distinct indices"):
        shrink_pair(model, "0", "2", np.array([0, 25]))
    with pytest.raises(InvalidInputError, match="do not chain"):
        shrink_pair(model, "0", "4", np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="no submodule"):
        shrink_pair(model, "0", "9", np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="scale has shape"):
        shrink_pair(model, "0", "2", np.array([0, 1]), scale=np.ones(3))


@pytest.mark.parametrize("affine", [True, False])
def test_shrink_keeps_dtype_and_device(affine):
    """A float64 model keeps float64 layers and BatchNorm (the BN came back float32 and the
    model failed on mixed dtypes); on the meta device (standing in for a GPU here) every new
    tensor, the reweighting scale included, lives where the model does."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10, affine=affine), nn.ReLU(),
                          nn.Linear(10, 3)).double().eval()
    x = torch.randn(20, 6, dtype=torch.float64)
    kept = np.array([0, 2, 3, 7, 9])
    shrink_pair(model, "0", "3", kept, scale=np.full(5, 1.5), bn="1")
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(b.dtype == torch.float64 for b in model.buffers() if b.is_floating_point())
    assert model(x).shape == (20, 3)
    meta = nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10, affine=affine), nn.ReLU(),
                         nn.Linear(10, 3)).to("meta")
    for fn in (shrink_pair, mask_pair):
        net = copy.deepcopy(meta)
        fn(net, "0", "3", kept, scale=np.full(5, 1.5), **({"bn": "1"} if fn is shrink_pair
                                                          else {}))
        assert all(t.device.type == "meta" for t in [*net.parameters(), *net.buffers()])
