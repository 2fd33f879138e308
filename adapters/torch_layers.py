"""PyTorch layer discovery: the prunable modules of a model (Linear, Conv1d, Conv2d) as dense
layer problems.

A Linear layer is its weight matrix (out x in) over inputs flattened to rows. A Conv1d/Conv2d
is a dense layer over its unfolded patches: group g has the (out/groups) x (in/groups * k)
matrix of its filters, acting on the patches of its own input channels, so a grouped
convolution yields one layer problem per group. Padding (any mode, 'same' included), stride
and dilation are applied exactly as the module's forward does.
"""

from __future__ import annotations

import re
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layertrim.errors import InvalidInputError

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
PIECE = 1 << 20  # entries of one piece of a batch's sample matrix (TorchLayer.items_per_piece)


@dataclass
class TorchLayer:
    """One prunable module. ``d`` is the number of inputs per output (per group)."""

    name: str
    module: nn.Module

    @property
    def kind(self) -> str:
        return type(self.module).__name__.lower()

    @property
    def groups(self) -> int:
        return int(getattr(self.module, "groups", 1))

    @property
    def m(self) -> int:
        """Outputs per group."""
        return self.module.weight.shape[0] // self.groups

    @property
    def d(self) -> int:
        return int(np.prod(self.module.weight.shape[1:]))

    def weight(self, group: int = 0) -> np.ndarray:
        """The (m, d) float64 weight matrix of one group (a copy, also for a float64 model)."""
        w = self.module.weight.detach()
        return w[group * self.m:(group + 1) * self.m].reshape(self.m, self.d).to(
            "cpu", torch.float64, copy=True).numpy()

    def bias(self, group: int = 0) -> np.ndarray | None:
        b = self.module.bias
        if b is None:
            return None
        return b.detach()[group * self.m:(group + 1) * self.m].to(
            "cpu", torch.float64, copy=True).numpy()

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse an input this layer would not take (the cascade's frontier hands a layer
        inputs it has not run on: a Linear's reshape would silently re-cut a 9-wide batch
        into 8-wide rows)."""
        mod = self.module
        if isinstance(mod, nn.Linear):
            ok, want = x.dim() >= 1 and x.shape[-1] == mod.in_features, \
                f"rows of {mod.in_features} features"
        else:
            k = mod.weight.dim() - 2  # spatial dimensions
            ok = x.dim() in (k + 1, k + 2) and x.shape[-(k + 1)] == mod.in_channels
            want = f"{mod.in_channels} channels of {k} spatial dimensions"
        if not ok:
            raise InvalidInputError(f"its input has shape {tuple(x.shape)}; the layer takes "
                                    f"{want}")

    def rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The layer's input as one (rows, d) matrix per group."""
        return [A.T for A in self.columns(x, x.dtype)]

    def columns(self, x: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        """The layer's input as one d x rows sample matrix per group, in ``dtype``: a
        convolution's patches are copied (and converted) once, straight from a strided view of
        its input into this layout, the rows ordered (image, position)."""
        mod = self.module
        if isinstance(mod, nn.Linear):
            return [x.reshape(-1, mod.in_features).T.to(dtype)]
        V = self._patch_view(x)  # (C, kh, kw, N, OH, OW)
        A = torch.empty(V.shape, dtype=dtype, device=x.device)
        A.copy_(V)
        A = A.view(self.d * self.groups, -1)
        return [A[g * self.d:(g + 1) * self.d] for g in range(self.groups)]

    def items_per_piece(self, x: torch.Tensor) -> int:
        """How many of a batch's leading items to take at a time so that a piece's sample
        matrix has about PIECE entries: several-MB temporaries, allocated afresh for every
        batch, cost more in page faults than their GEMM (2-2.5x on LeNet's convolutions).
        An unbatched input is one piece."""
        conv = not isinstance(self.module, nn.Linear)
        if x.dim() < (self.module.weight.dim() if conv else 2) or len(x) == 0:
            return max(len(x), 1) if x.dim() > 0 else 1
        V = self._patch_view(x[:1]) if conv else None
        per_item = V.shape[4] * V.shape[5] if V is not None else x[0].numel() // self.d
        return max(1, PIECE // (per_item * self.d * self.groups))

    def _patch_view(self, x: torch.Tensor) -> torch.Tensor:
        """A convolution's input patches as a strided view (C, kh, kw, N, OH, OW) of its
        (padded) input: no copy. Entry (c, i, j, n, p, q) is the input the weight
        (., c, i, j) meets at output position (p, q) of image n."""
        mod = self.module
        if x.dim() == mod.weight.dim() - 1:  # an unbatched input
            x = x.unsqueeze(0)
        if isinstance(mod.padding, str) or any(mod.padding) or mod.padding_mode != "zeros":
            mode = "constant" if mod.padding_mode == "zeros" else mod.padding_mode
            x = F.pad(x, mod._reversed_padding_repeated_twice, mode=mode)
        ks, st, dl = mod.kernel_size, mod.stride, mod.dilation
        if isinstance(mod, nn.Conv1d):  # a Conv1d is a Conv2d of height 1
            x, ks, st, dl = x.unsqueeze(2), (1, ks[0]), (1, st[0]), (1, dl[0])
        N, C, H, W = x.shape
        out = [(size - d * (k - 1) - 1) // s + 1
               for size, k, s, d in zip((H, W), ks, st, dl, strict=True)]
        if min(out) < 1:
            raise InvalidInputError(f"an input of spatial size {(H, W)} (padded) is smaller "
                                    f"than the kernel {tuple(ks)} with dilation {tuple(dl)}")
        sN, sC, sH, sW = x.stride()
        return x.as_strided((C, ks[0], ks[1], N, out[0], out[1]),
                            (sC, dl[0] * sH, dl[1] * sW, sN, st[0] * sH, st[1] * sW))


def stream_generator(seed: int, name: str, group: int = 0) -> torch.Generator:
    """A random stream for one layer group, seeded from the run's seed and the layer's name
    (not its position among the layers asked for): a resume that calibrates only the
    unfinished layers, or a run with other layers included, draws the same rows for it."""
    key = zlib.crc32(f"{name}#{group}".encode())
    state = np.random.SeedSequence([int(seed), key]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _patterns(spec) -> list[re.Pattern]:
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    try:
        return [re.compile(s) for s in items]
    except (re.error, TypeError) as e:
        raise InvalidInputError(f"bad layer name pattern {spec!r}: {e}") from None


def find_layers(model: nn.Module, include=None, exclude=None, *,
                quiet: bool = False) -> list[TorchLayer]:
    """The Linear/Conv1d/Conv2d modules of ``model`` in registration order; a module whose
    weight is another's (tied weights) is left to the first (a warning says so): pruned once,
    counted once; nn.MultiheadAttention's out_proj is left out (with a warning): the attention
    uses its weight without calling it, so no hook sees its inputs.

    Parameters
    ----------
    include, exclude : a name, a regex, or a list of them, matched against the whole module
        name (``re.fullmatch``); include keeps only matching layers, exclude drops them.
    quiet : no warnings (for the internal look-ups that follow the user-facing one).
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc, exc = _patterns(include), _patterns(exclude)
    found, names = [], []
    owner: dict[int, str] = {}  # weight tensor -> the layer that prunes it
    # nn.MultiheadAttention reads its out_proj's weight without calling the module: no hook
    # sees its inputs (every model with one was refused, "never ran in the forward pass")
    attention = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    skipped = []
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE):
            continue
        names.append(name)
        if inc and not any(p.fullmatch(name) for p in inc):
            continue
        if any(p.fullmatch(name) for p in exc):
            continue
        if id(mod) in attention:
            skipped.append(name)
            continue
        key = id(getattr(mod, "weight_orig", mod.weight))
        if key in owner:  # tied weights: pruned once, by the first layer that holds them
            if not quiet:
                warnings.warn(f"layer {name} shares its weight with layer {owner[key]}: the "
                              f"shared tensor is pruned once, on {owner[key]}'s inputs",
                              stacklevel=2)
            continue
        owner[key] = name
        found.append(TorchLayer(name, mod))
    if skipped and not quiet:
        warnings.warn(f"left unpruned: {skipped} (nn.MultiheadAttention's out_proj, whose "
                      f"weight the attention uses without calling the layer)", stacklevel=2)
    if not found:
        raise InvalidInputError(f"no prunable layer matches include={include!r} "
                                f"exclude={exclude!r}; prunable layers: {names}")
    if quiet:
        return found
    for kind, pats in (("include", inc), ("exclude", exc)):
        for p in pats:
            if not any(p.fullmatch(n) for n in names):  # a typo would pass unnoticed
                warnings.warn(f"{kind} pattern {p.pattern!r} matches no prunable layer "
                              f"(prunable layers: {names})", stacklevel=2)
    _warn_shared_elsewhere(model, owner)
    return found


def _warn_shared_elsewhere(model: nn.Module, owner: dict[int, str]) -> None:
    """A pruned weight that another, non-prunable module also holds (an embedding tied to an
    output layer) is pruned there too: say so."""
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in owner:
                warnings.warn(f"layer {owner[id(p)]}'s weight is also {name}.{pname} "
                              f"({type(mod).__name__}): pruning the layer prunes it there too",
                              stacklevel=3)

