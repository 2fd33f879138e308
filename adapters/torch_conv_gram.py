"""A convolution's patch Grams from the Gram of its input pixels, for small feature maps.

The patch Gram of a convolution is a sum of pixel products: with P[t, a] the input pixel that
patch entry a (channel, kernel row, kernel column) reads at output position t,

    H[a, b] = sum over images and t of x[P[t, a]] x[P[t, b]] = sum_t G[P[t, a], P[t, b]],

where G is the Gram of the flattened input images (pixels x pixels, one row per image). Taking
G with one GEMM per batch straight from the input's memory, then summing its entries over the
positions, skips the patch copy (kh kw times the input) and the narrow, memory-bound GEMM on
it. Worth it where G is not much bigger than the patch Gram's work: LeNet-5's convolutions
(28 x 28 and 6 x 14 x 14 inputs) have G at 1.3x and 0.6x the patch products' flops, and
calibrating them this way is several times faster; a 3 x 224 x 224 image (150528 pixels) is
far out of reach, and keeps the patches. ``pixel_plan`` decides, per input shape.

Padding by zeros reads no pixel (P = -1 there); other padding modes read pixels more than
once per patch and keep the patches, as do row subsampling (``max_rows``) and inputs of other
shapes than the plan's.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import nn

from layertrim.adapters import torch_layers
from layertrim.adapters.torch_gram import GramSum
from layertrim.adapters.torch_layers import TorchLayer
from layertrim.gram import Gram

PIXEL_FLOPS = 1.5  # the pixel route when G's entries <= this x positions x patch Gram entries
PIXEL_BYTES = 64 << 20  # and what the route holds for the layer fits here (_bytes)


class PixelPlan:
    """Where each patch entry of one group reads the group's flattened input, per position:
    ``index`` (positions x d, int64; -1 in the zero padding), for inputs of ``shape``."""

    def __init__(self, layer: TorchLayer, shape: tuple[int, ...]) -> None:
        mod = layer.module
        self.shape = tuple(shape)  # one item's (C, H, W) or (C, L)
        c = mod.in_channels // layer.groups
        self.pixels = c * int(np.prod(shape[1:]))  # one group's
        # the patch view of an image of its own pixel numbers (1-based: the padding reads 0)
        ids = torch.arange(1, self.pixels + 1, dtype=torch.float64).reshape(1, c, *shape[1:])
        V = layer._patch_view(ids)  # (c, kh, kw, 1, OH, OW)
        self.positions = V.shape[4] * V.shape[5]
        index = V.reshape(-1, self.positions).T.numpy().astype(np.int64) - 1
        # G over the pixels that some patch reads (a stride or a dilation can skip some: a
        # NaN there must not reach the Gram, which the patches never see)
        read = np.unique(index[index >= 0])
        self.read = None if len(read) == self.pixels else torch.from_numpy(read)
        remap = np.full(self.pixels + 1, -1, dtype=np.int64)  # remap[-1] stays -1
        remap[read] = np.arange(len(read))
        self.index = np.ascontiguousarray(remap[index])
        self.size = len(read)  # G's side


def _bytes(plan: PixelPlan, groups: int, cross: bool, float32: bool) -> int:
    """What the pixel route holds for one layer at the end: per group and matrix (X^T X, and
    X^T X0 with the cross term) the float64 running sums (rows padded to 16 entries), the
    float32 partial sums with ``float32``, and to_gram's float64 copy; plus the groups'
    shared buffer (torch_layers.PIECE entries)."""
    p = plan.size + 1
    per_matrix = p * (-(-p // 16) * 16) * (8 + (4 if float32 else 0)) + p * p * 8
    return groups * per_matrix * (2 if cross else 1) + 8 * torch_layers.PIECE


def pixel_plan(layer: TorchLayer, x: torch.Tensor, cross: bool,
               float32: bool = False) -> PixelPlan | None:
    """The plan for a batch ``x`` of ``layer``'s inputs when the pixel route pays, else None
    (a Linear, padding other than zeros, a feature map too big for it)."""
    mod = layer.module
    if isinstance(mod, nn.Linear) or mod.padding_mode != "zeros":
        return None
    item = _item_shape(layer, x)
    pixels = mod.in_channels // layer.groups * int(np.prod(item[1:]))
    if layer.groups * pixels**2 * 8 * (2 if cross else 1) > 2 * PIXEL_BYTES:
        return None  # too big whatever the plan says (and not worth building the plan)
    plan = PixelPlan(layer, item)
    if plan.size**2 > PIXEL_FLOPS * plan.positions * layer.d**2 or _bytes(
            plan, layer.groups, cross, float32) > PIXEL_BYTES:
        return None
    return plan


def _item_shape(layer: TorchLayer, x: torch.Tensor) -> tuple[int, ...]:
    """One input item's shape, (C, H, W) or (C, L), of a batch or of an unbatched input."""
    return tuple(x.shape[1:] if x.dim() == layer.module.weight.dim() else x.shape)


class PixelGramSum:
    """Per group, the running Gram of the flattened input images (``GramSum``, with its dtype
    rules and buffering), turned into the patch Grams by ``to_grams``."""

    def __init__(self, layer: TorchLayer, plan: PixelPlan, cross: bool, float32: bool) -> None:
        self.layer, self.plan = layer, plan
        self.sums = [GramSum(plan.size, plan.size if cross else None, float32)
                     for _ in range(layer.groups)]
        for s in self.sums:  # the groups share one buffer budget, as their patches do
            s.limit_buffer(torch_layers.PIECE // layer.groups)

    def fits(self, x: torch.Tensor) -> bool:
        return _item_shape(self.layer, x) == self.plan.shape

    def add(self, x: torch.Tensor, x_ref: torch.Tensor | None) -> None:
        """Add a batch of whole images (and the reference's, for the cross term)."""
        c = self.layer.module.in_channels // self.layer.groups
        flat = [None if t is None else t.reshape(-1, self.layer.module.in_channels,
                                                 *self.plan.shape[1:]) for t in (x, x_ref)]
        read = self.plan.read
        for g, s in enumerate(self.sums):
            mats = []
            for t in flat:
                if t is None:
                    mats.append(None)
                    continue
                A = t[:, g * c:(g + 1) * c].reshape(t.shape[0], self.plan.pixels)
                mats.append((A if read is None else A[:, read.to(A.device)]).T)
            s.add(*mats)

    @property
    def n(self) -> int:
        return self.sums[0].n

    def to_grams(self) -> list[Gram]:
        out = []
        index = self.plan.index
        for s in self.sums:
            G = s.to_gram()
            d = index.shape[1]
            if G.n == 0:
                out.append(Gram(d, None if G.cross is None else d))
                continue
            H = np.zeros((d, d))
            _window_sums(G.H, index, H, True)
            cross = total0 = None
            if G.cross is not None:
                cross = np.zeros((d, d))
                _window_sums(G.cross, index, cross, False)
                total0 = _window_vector(G.sum0, index)
            out.append(Gram.holding(H, _window_vector(G.sum, index), G.n * self.plan.positions,
                                    cross, total0))
        return out


@numba.njit(cache=True)
def _window_sums(G, index, out, symmetric):
    """out[a, b] += sum_t G[index[t, a], index[t, b]] over the entries that read pixels; with
    ``symmetric`` only a <= b is summed and mirrored. Position by position, so the rows of G
    that one position reads stay in cache for the next, which reads them shifted by one."""
    T, d = index.shape
    for t in range(T):
        for a in range(d):
            i = index[t, a]
            if i < 0:
                continue
            for b in range(a if symmetric else 0, d):
                j = index[t, b]
                if j >= 0:
                    out[a, b] += G[i, j]
    if symmetric:
        for a in range(d):
            for b in range(a + 1, d):
                out[b, a] = out[a, b]


def _window_vector(v: np.ndarray, index: np.ndarray) -> np.ndarray:
    """sum_t v[index[t, a]] over the entries that read pixels."""
    return np.where(index >= 0, v[np.maximum(index, 0)], 0.0).sum(axis=0)
