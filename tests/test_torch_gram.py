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
    import layertrim.adapters.torch_layers as tl
    from tests.test_torch_adapter import make

    net, calib = make()
    dense, _ = make()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)  # a different "pruned" model, so the cross term is not X^T X
    layers = find_layers(net)
    whole = collect_grams(net, layers, calib, reference=dense)
    assert layers[0].items_per_piece(calib[0]) >= len(calib[0])  # one piece by default
    monkeypatch.setattr(tl, "PIECE", 1)
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


def _augmented_rows(layer, x: torch.Tensor) -> list[np.ndarray]:
    """Brute force: each group's input rows with a ones column, [X, 1], in float64, from
    torch's own F.unfold of the padded input (or the flattened input of a Linear)."""
    mod = layer.module
    if isinstance(mod, nn.Linear):
        X = [x.reshape(-1, mod.in_features).double()]
    else:
        conv1d = isinstance(mod, nn.Conv1d)
        xp = x.unsqueeze(2) if conv1d else x
        pad = tuple(mod._reversed_padding_repeated_twice) + ((0, 0) if conv1d else ())
        mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
        xp = torch.nn.functional.pad(xp, pad, mode=mode)
        two = (lambda t: (1, t[0])) if conv1d else tuple
        U = torch.nn.functional.unfold(xp.double(), two(mod.kernel_size),
                                       dilation=two(mod.dilation), stride=two(mod.stride))
        U = U.transpose(1, 2).reshape(-1, U.shape[1])  # rows (image, position)
        X = list(U.split(U.shape[1] // mod.groups, dim=1))
    return [np.hstack([g.numpy(), np.ones((len(g), 1))]) for g in X]


LAYERS = {
    "linear": (lambda: nn.Linear(6, 4), (6,)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, dilation=2, padding=1), (3, 19)),
    "conv2d": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2),
               (4, 11, 9)),
    "conv2d-same": (lambda: nn.Conv2d(3, 5, (2, 3), padding="same", padding_mode="reflect"),
                    (3, 7, 8)),
}


@pytest.mark.parametrize("gram_dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("direct_rows", [256, 1])
@pytest.mark.parametrize("route", ["patches", "pixels", "both"])
def test_grams_equal_brute_force_augmented_grams(kind, gram_dtype, direct_rows, route,
                                                 monkeypatch):
    """Every statistic, the column sums and the reference's from the ones row included, equals
    the float64 Gram of [X, 1] and the cross term [X, 1]^T [X0, 1], over batches of uneven
    sizes: with short batches buffered (DIRECT_ROWS 256) and with every batch multiplied as it
    comes (DIRECT_ROWS 1), for Linear, Conv1d and Conv2d with groups, padding (zeros, reflect,
    'same'), stride and dilation; a convolution by its patches, by the Grams of its input
    images (torch_conv_gram; reflect padding keeps the patches), and by both (a batch of
    another spatial size than the first goes the patch route, and the two sums add up)."""
    from layertrim.adapters import torch_conv_gram as tcg
    from layertrim.adapters.torch import TorchLayer

    monkeypatch.setattr(tg, "DIRECT_ROWS", direct_rows)
    monkeypatch.setattr(tcg, "PIXEL_FLOPS", 0.0 if route == "patches" else 1e9)
    build, shape = LAYERS[kind]
    torch.manual_seed(0)
    net, ref = nn.Sequential(build()), nn.Sequential(build())
    calib = [torch.randn(b, *shape) for b in (5, 1, 9, 3)]
    if route == "both" and kind != "linear":  # a wider image in the middle
        calib.insert(2, torch.randn(4, *shape[:-1], shape[-1] + 3))
    by_pixels = []
    real_add = tcg.PixelGramSum.add
    monkeypatch.setattr(tcg.PixelGramSum, "add",
                        lambda self, x, x0: (by_pixels.append(len(x)), real_add(self, x, x0)))
    layer = TorchLayer("0", net[0])
    got = collect_grams(net, [layer], calib, reference=ref, gram_dtype=gram_dtype)["0"]
    rows = [_augmented_rows(layer, x) for x in calib]
    with torch.no_grad():
        rows0 = [_augmented_rows(TorchLayer("0", ref[0]), x) for x in calib]
    tol = 1e-6 if gram_dtype == "float32" else 1e-12
    assert len(got) == layer.groups
    for g, G in enumerate(got):
        Xa = np.vstack([r[g] for r in rows])
        X0a = np.vstack([r[g] for r in rows0])
        assert G.n == len(Xa)
        assert np.array_equal(G.H, G.H.T)
        for have, want in [(G.augmented(), Xa.T @ Xa), (G.cross, Xa[:, :-1].T @ X0a[:, :-1]),
                           (G.sum0, X0a[:, :-1].sum(0))]:
            np.testing.assert_allclose(have, want, rtol=0, atol=tol * np.abs(want).max())
    zero_padded = kind in ("conv1d", "conv2d")  # what the pixel route takes
    assert len(by_pixels) == (0 if route == "patches" or not zero_padded else
                              len(calib) - (route == "both"))


@pytest.mark.parametrize("float32", [False, True])
def test_buffer_fills_across_uneven_batches(float32, monkeypatch):
    """Short batches wait in a buffer of 8 rows, which is multiplied when a batch does not fit
    and when full; longer ones (some longer than the buffer) go straight through (a matrix in
    the product dtype) or through a temporary copy (a conversion, a patch view); a float64
    batch in a float32 sum multiplies out the float32 buffer and makes a float64 one, and
    back. Everything equals the exact float64 sums."""
    monkeypatch.setattr(tg, "DIRECT_ROWS", 6)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((60, 7)).astype(np.float32)
    X0 = rng.standard_normal((60, 3)).astype(np.float32)
    s = GramSum(7, 3, float32=float32, buffer_entries=8 * 8)  # 8 rows of d + 1 = 8
    assert s.capacity == 8
    # 3, 4; 2 (no room: multiplied first); 5, 1 (full); 10 (> 8); 14 as a patch view; 4 in
    # float64 (a float32 sum makes a float64 buffer), 3 in float32 again; 14
    cuts = [0, 3, 7, 9, 14, 15, 25, 39, 43, 46, 60]
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        A, A0 = torch.from_numpy(X[a:b]).T, torch.from_numpy(X0[a:b]).T
        if i == 6:
            A, A0 = A.reshape(7, 2, 7), A0.reshape(3, 7, 2)  # not a matrix: copied once
        elif i == 7:
            A, A0 = A.double(), A0.double()
        fill = s.capacity - s.room
        s.add(A, A0)
        assert s.n == b
        if b - a < tg.DIRECT_ROWS:  # buffered: appended, or the buffer was multiplied first
            assert s.capacity - s.room in ((fill + b - a) % 8, b - a)
        else:  # multiplied at once: the buffer is left as it was
            assert s.capacity - s.room == fill
    g = s.to_gram()
    Xd, X0d = X.astype(np.float64), X0.astype(np.float64)
    tol = 1e-6 if float32 else 1e-13
    for have, want in [(g.H, Xd.T @ Xd), (g.cross, Xd.T @ X0d), (g.sum, Xd.sum(0)),
                       (g.sum0, X0d.sum(0))]:
        np.testing.assert_allclose(have, want, rtol=0, atol=tol * np.abs(want).max())


def test_cross_term_inputs_must_match_d0():
    with pytest.raises(InvalidInputError, match="exactly when d0"):
        GramSum(3).add(torch.ones(3, 2), torch.ones(3, 2))
    with pytest.raises(InvalidInputError, match="exactly when d0"):
        GramSum(3, 2).add(torch.ones(3, 2))
    with pytest.raises(InvalidInputError, match="2 rows for X but 3"):
        GramSum(3, 2).add(torch.ones(3, 2), torch.ones(2, 3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [26, 151, 785])
def test_upper_gram_panels_by_dtype(d, dtype):
    """The default panels (shorter in float64, at least two from d = 128) cover the upper
    triangle; the lower one is left alone and _symmetric_from_upper completes the symmetric
    Gram."""
    A = torch.randn(d, 40, dtype=dtype)
    H = torch.zeros(d, d, dtype=dtype)
    add_upper_gram(H, A)
    want = A.double().numpy() @ A.double().numpy().T
    iu = np.triu_indices(d)
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(H.double().numpy()[iu], want[iu], rtol=0, atol=tol)
    if d >= 128:  # at least two panels, so some of the lower triangle was never written
        assert (np.tril(H.numpy(), -1) == 0).any()
    full = np.empty((d, d))
    assert tg._symmetric_from_upper(H.numpy(), full)
    np.testing.assert_allclose(full, want, rtol=0, atol=tol)
    wide = torch.zeros(d + 1, d + 16, dtype=dtype)  # a strided view, as GramSum's sums are
    add_upper_gram(wide[:d, :d], A)
    assert tg._symmetric_from_upper(wide[:d, :d].numpy(), full)
    np.testing.assert_allclose(full, want, rtol=0, atol=tol)
    assert not wide[d:].any() and not wide[:, d:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 64, 65, 130])
def test_symmetric_from_upper_reads_the_upper_triangle_of_a_strided_view(d, dtype):
    """to_gram's one-pass finish: H in float64 from the upper triangle of a padded view
    (GramSum's sums), whatever the lower triangle holds, for tile edges on and off 64; a NaN
    or Inf in the upper triangle (and only there) is reported."""
    rng = np.random.default_rng(d)
    wide = rng.standard_normal((d + 1, d + 16)).astype(dtype)
    S = wide[:d, :d]
    if d > 1:
        S[-1, 0] = np.nan  # below the diagonal: junk, never read
    H = np.full((d, d), np.nan)
    assert tg._symmetric_from_upper(S, H)
    upper = np.triu(S.astype(np.float64))
    np.testing.assert_array_equal(H, upper + np.triu(upper, 1).T)
    for bad in (np.inf, np.nan):
        S[0, d - 1] = bad
        assert not tg._symmetric_from_upper(S, H)


def test_grouped_layer_shares_the_buffer_budget(monkeypatch):
    """The groups of a convolution share PIECE buffered entries, so a depthwise layer's
    buffers stay as small as one ordinary layer's."""
    import layertrim.adapters.torch as ta
    import layertrim.adapters.torch_layers as tl

    monkeypatch.setattr(tl, "PIECE", 4096)
    conv = nn.Conv2d(8, 8, 3, groups=8)
    layer = ta.TorchLayer("c", conv)
    sums = [GramSum(layer.d) for _ in range(layer.groups)]
    ta.accumulate(layer, sums, torch.randn(2, 8, 5, 5), None, None, torch.Generator())
    assert all(s.capacity == 4096 // 8 // (layer.d + 1) for s in sums)
    assert sum(s.capacity * (s.d + 1) for s in sums) <= 4096


def test_the_cross_term_pairs_the_pruned_input_with_the_dense_one():
    """Layer 2 sees different inputs in the two networks (their first layers differ): the
    cross term must be [X, 1]^T [X0, 1] of those two inputs, not of either one twice."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    ref = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    calib = [torch.randn(b, 6) for b in (7, 300, 2)]
    from layertrim.adapters.torch import TorchLayer

    G = collect_grams(net, [TorchLayer("2", net[2])], calib, reference=ref,
                      gram_dtype="float64")["2"][0]
    with torch.no_grad():
        X = torch.cat([net[1](net[0](x)) for x in calib]).double().numpy()
        X0 = torch.cat([ref[1](ref[0](x)) for x in calib]).double().numpy()
    assert not np.allclose(X, X0)
    np.testing.assert_allclose(G.cross, X.T @ X0, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G.sum0, X0.sum(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G.H, X.T @ X, rtol=1e-12, atol=1e-12)


def test_memory_is_bounded_by_the_buffer_not_the_rows(monkeypatch):
    """A whole calibration set given as one float32 matrix, multiplied in float64: the copies
    are taken a piece at a time (no temporary of rows x d); a narrow layer's short-batch
    buffer holds at most BUFFER_ROWS rows."""
    sizes = []
    real = tg.GramSum._buffers

    def spy(self, rows, dtype, device, cross):
        sizes.append(rows * (self.d + 1))
        return real(self, rows, dtype, device, cross)

    monkeypatch.setattr(tg.GramSum, "_buffers", spy)
    d, n = 300, 20000
    X = torch.randn(d, n)  # float32: float64 products need a copy
    s = tg.GramSum(d)
    s.add(X)
    assert s.n == n
    assert max(sizes) <= (d + 1) * max(tg.DIRECT_ROWS, tg.BUFFER_ENTRIES // (d + 1))
    np.testing.assert_allclose(s.to_gram().H, (X.double() @ X.double().T).numpy(),
                               rtol=1e-12, atol=1e-9)
    narrow = tg.GramSum(8)
    for _ in range(3):
        narrow.add(torch.randn(8, 16, dtype=torch.float64))
    assert narrow.capacity == tg.BUFFER_ROWS and narrow._buf[0].shape[1] <= tg.BUFFER_ROWS


def test_pixel_route_is_chosen_for_small_feature_maps_only():
    """LeNet-5's convolutions take their Grams from the input images; a 3 x 64 x 64 image
    (G of 12288^2 entries), a reflect padding and rows drawn at random keep the patches."""
    from layertrim.adapters import torch_conv_gram as tcg
    from layertrim.adapters.torch import TorchLayer

    conv1, conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
    assert tcg.pixel_plan(TorchLayer("a", conv1), torch.zeros(2, 1, 28, 28), True) is not None
    plan = tcg.pixel_plan(TorchLayer("b", conv2), torch.zeros(2, 6, 14, 14), False)
    assert plan is not None and plan.index.shape == (100, 150) and plan.index.min() == 0
    big = TorchLayer("c", nn.Conv2d(3, 8, 3, padding=1))
    assert tcg.pixel_plan(big, torch.zeros(2, 3, 64, 64), False) is None
    reflect = TorchLayer("d", nn.Conv2d(1, 6, 5, padding=2, padding_mode="reflect"))
    assert tcg.pixel_plan(reflect, torch.zeros(2, 1, 28, 28), False) is None
    from layertrim.adapters.torch_calib import LayerSums
    sampled = LayerSums(TorchLayer("a", conv1), False, False, 50, torch.Generator())
    sampled.add(torch.randn(3, 1, 28, 28), None)
    assert sampled.pixels is None and sampled.groups[0].n == 50  # max_rows per batch


def test_pixel_route_edge_cases(monkeypatch):
    """The pixel route takes an empty batch as the patches do; a pixel that no patch reads (a
    stride skipping the last column) stays out of G, so a NaN there is no error; the groups of
    a depthwise layer share one buffer budget; and a GramSum is final after to_gram (its cross
    term is the Gram's own copy)."""
    from layertrim.adapters import torch_conv_gram as tcg
    from layertrim.adapters import torch_layers as tl
    from layertrim.adapters.torch import TorchLayer

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1))
    layer = TorchLayer("0", net[0])
    full = [torch.randn(3, 1, 5, 5)]
    with_empty = collect_grams(net, [layer], full + [torch.zeros(0, 1, 5, 5)])["0"][0]
    want = collect_grams(net, [layer], full)["0"][0]
    assert with_empty.n == want.n == 75
    np.testing.assert_array_equal(with_empty.H, want.H)

    strided = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2))
    x = torch.randn(4, 1, 6, 6)
    monkeypatch.setattr(tcg, "PIXEL_FLOPS", 1e9)  # G is bigger than the patches' work here
    plan = tcg.pixel_plan(TorchLayer("0", strided[0]), x, False)
    assert plan is not None and plan.size == 25 < plan.pixels == 36  # column 5, row 5 unread
    x[:, :, 5, :] = float("nan")
    exact = {"gram_dtype": "float64"}  # the two routes' sums, free of float32 rounding
    got = collect_grams(strided, [TorchLayer("0", strided[0])], [x], **exact)["0"][0]
    monkeypatch.setattr(tcg, "PIXEL_FLOPS", 0.0)  # the patches
    ref = collect_grams(strided, [TorchLayer("0", strided[0])], [x], **exact)["0"][0]
    assert np.isfinite(got.H).all()
    np.testing.assert_allclose(got.augmented(), ref.augmented(), rtol=1e-12, atol=1e-12)
    monkeypatch.undo()

    depthwise = TorchLayer("dw", nn.Conv2d(64, 64, 3, padding=1, groups=64))
    plan = tcg.pixel_plan(depthwise, torch.zeros(2, 64, 7, 7), True)
    assert plan is not None
    sums = tcg.PixelGramSum(depthwise, plan, True, False)
    assert sum(s.capacity * (s.d + 1) for s in sums.sums) <= tl.PIECE + len(sums.sums) * 50

    s = tg.GramSum(1, 1)
    A = torch.randn(1, 300, dtype=torch.float64)
    s.add(A, A)
    g = s.to_gram()
    before = g.cross.copy()
    with pytest.raises(RuntimeError, match="after to_gram"):
        s.add(A, A)
    np.testing.assert_array_equal(g.cross, before)
