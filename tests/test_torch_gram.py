"""The torch-side running Gram sums (adapters/torch_gram.py): the blocked upper-triangle
product, float64 and float32 partial sums against exact numpy sums, and bad batches."""

import numpy as np
import pytest
import torch
from torch import nn

import layertrim.adapters.torch_gram as tg
from layertrim.adapters.torch import collect_grams, find_layers
from layertrim.adapters.torch_gram import GramSum, add_upper_gram
from layertrim.errors import InvalidInputError


@pytest.mark.parametrize("d, block", [(5, 256), (785, 256), (29, 4), (30, 7)])
def test_upper_gram_blocks_cover_the_upper_triangle(d, block, monkeypatch):
    monkeypatch.setattr(tg, "BLOCK_ROWS", block)  # (29, 4) and (30, 7): four ragged blocks
    A = torch.randn(d, 50, dtype=torch.float64)
    H = torch.full((d, d), 3.0, dtype=torch.float64)
    add_upper_gram(H, A)
    ref = 3.0 + A.numpy() @ A.numpy().T
    iu = np.triu_indices(d)
    np.testing.assert_allclose(H.numpy()[iu], ref[iu], rtol=1e-13, atol=1e-12)


@pytest.mark.parametrize("float32", [False, True])
def test_running_sums_match_exact_sums(float32, monkeypatch):
    """Ragged batches, with GRAM_CHUNK small enough that float32 partial sums are flushed both
    inside a batch and across batches: every statistic matches the exact float64 sums."""
    monkeypatch.setattr(tg, "GRAM_CHUNK", 23)
    monkeypatch.setattr(tg, "BLOCK_ROWS", 6)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((120, 19)).astype(np.float32)
    X0 = rng.standard_normal((120, 11)).astype(np.float32)
    s = GramSum(19, 11, float32=float32)
    for a, b in [(0, 10), (10, 17), (17, 60), (60, 61), (61, 120)]:
        s.add(torch.from_numpy(X[a:b]).T, torch.from_numpy(X0[a:b]).T)
    g = s.to_gram()
    Xd, X0d = X.astype(np.float64), X0.astype(np.float64)
    tol = 1e-6 if float32 else 1e-13
    assert g.n == 120
    assert np.array_equal(g.H, g.H.T)
    for got, want in [(g.H, Xd.T @ Xd), (g.cross, Xd.T @ X0d), (g.sum, Xd.sum(0)),
                      (g.sum0, X0d.sum(0))]:
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())
    if float32:  # the partial sums really were float32
        assert not np.allclose(g.H, Xd.T @ Xd, rtol=0, atol=1e-12 * np.abs(g.H).max())


def test_nan_in_a_layers_input_names_the_layer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    calib = [torch.randn(5, 4), torch.randn(5, 4)]
    calib[1][2, 1] = float("inf")  # inf * 0 weights and inf - inf give NaN downstream too
    with pytest.raises(InvalidInputError, match="layer 0: .*NaN or Inf"):
        collect_grams(net, find_layers(net), calib)


def test_empty_sum_is_an_empty_gram():
    g = GramSum(3).to_gram()
    assert g.n == 0 and not g.H.any()


def test_batches_unfolded_in_pieces_give_the_same_grams(monkeypatch):
    """A batch is unfolded a few images at a time (PIECE entries); with pieces of one or two
    images the Grams, cross terms included, equal the one-piece result."""
    import layertrim.adapters.torch as ta
    from tests.test_torch_adapter import make

    net, calib = make()
    dense, _ = make()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)  # a different "pruned" model, so the cross term is not X^T X
    layers = find_layers(net)
    whole = collect_grams(net, layers, calib, reference=dense)
    assert layers[0].items_per_piece(calib[0]) >= len(calib[0])  # one piece by default
    monkeypatch.setattr(ta, "PIECE", 1)
    assert layers[0].items_per_piece(calib[0]) == 1
    pieces = collect_grams(net, layers, calib, reference=dense)
    for la in layers:
        for a, b in zip(whole[la.name], pieces[la.name], strict=True):
            assert a.n == b.n
            for x, y in [(a.H, b.H), (a.cross, b.cross), (a.sum, b.sum), (a.sum0, b.sum0)]:
                np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12 * np.abs(x).max())


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
    nn.Conv2d(3, 5, (2, 3), padding="same", padding_mode="reflect"),
    nn.Conv2d(3, 5, (2, 3), stride=(1, 2), padding=(1, 0)),
    nn.Conv2d(2, 2, 3, padding=2, padding_mode="circular", groups=2),
    nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=1),
])
def test_strided_patch_copy_equals_unfold(conv):
    """The sample matrix copied from a strided view of the input equals torch's F.unfold of
    the padded input, column for column (image-major, then output position)."""
    from layertrim.adapters.torch import TorchLayer

    x = torch.randn(3, conv.in_channels, 9, 8) if isinstance(conv, nn.Conv2d) else \
        torch.randn(3, conv.in_channels, 11)
    layer = TorchLayer("c", conv)
    got = layer.columns(x, torch.float64)
    xp = x if isinstance(conv, nn.Conv2d) else x.unsqueeze(2)
    pad = conv._reversed_padding_repeated_twice
    if isinstance(conv, nn.Conv1d):
        pad = (*pad, 0, 0)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = torch.nn.functional.pad(xp, pad, mode=mode)
    k = conv.kernel_size if isinstance(conv, nn.Conv2d) else (1, conv.kernel_size[0])
    s = conv.stride if isinstance(conv, nn.Conv2d) else (1, conv.stride[0])
    dl = conv.dilation if isinstance(conv, nn.Conv2d) else (1, conv.dilation[0])
    U = torch.nn.functional.unfold(xp, k, dilation=dl, stride=s)  # (N, C*k, L)
    want = U.transpose(0, 1).reshape(U.shape[1], -1).double()
    per = want.shape[0] // conv.groups
    assert len(got) == conv.groups
    for g, A in enumerate(got):
        assert A.dtype == torch.float64
        torch.testing.assert_close(A, want[g * per:(g + 1) * per], rtol=0, atol=0)
    with torch.no_grad():  # and the layer's own output is W times those columns
        out = conv(x).reshape(3, conv.out_channels, -1)
        W = conv.weight.reshape(conv.groups, conv.out_channels // conv.groups, -1).double()
        for g, A in enumerate(got):
            y = (W[g] @ A).reshape(W.shape[1], 3, -1).transpose(0, 1)
            if conv.bias is not None:
                y = y + conv.bias.double().reshape(conv.groups, -1)[g][None, :, None]
            torch.testing.assert_close(y, out[:, g * W.shape[1]:(g + 1) * W.shape[1]].double(),
                                       rtol=1e-5, atol=1e-5)


def test_input_smaller_than_the_kernel_is_refused():
    from layertrim.adapters.torch import TorchLayer

    with pytest.raises(InvalidInputError, match="smaller than the kernel"):
        TorchLayer("c", nn.Conv2d(1, 1, 5)).columns(torch.zeros(1, 1, 3, 3), torch.float32)
