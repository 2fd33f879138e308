"""PyTorch bridge: find the prunable layers of a module, stream their calibration inputs into
Gram accumulators, and write pruned weights back.

A Linear layer is its weight matrix (out x in) over inputs flattened to rows. A Conv1d/Conv2d
is a dense layer over its unfolded patches: group g has the (out/groups) x (in/groups * k)
matrix of its filters, acting on the patches of its own input channels, so a grouped
convolution yields one layer problem per group. Padding (any mode, 'same' included), stride
and dilation are applied exactly as the module's forward does.

Only this package imports torch; the solvers see numpy arrays.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from layertrim.adapters.torch_gram import GramSum, check_gram_dtype
from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.validate import check_int

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


def _patterns(spec) -> list[re.Pattern]:
    if spec is None:
        return []
    items = [spec] if isinstance(spec, str) else list(spec)
    try:
        return [re.compile(s) for s in items]
    except (re.error, TypeError) as e:
        raise InvalidInputError(f"bad layer name pattern {spec!r}: {e}") from None


def find_layers(model: nn.Module, include=None, exclude=None) -> list[TorchLayer]:
    """The Linear/Conv1d/Conv2d modules of ``model`` in registration order.

    Parameters
    ----------
    include, exclude : a name, a regex, or a list of them, matched against the whole module
        name (``re.fullmatch``); include keeps only matching layers, exclude drops them.
    """
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inc, exc = _patterns(include), _patterns(exclude)
    found, names = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE):
            continue
        names.append(name)
        if inc and not any(p.fullmatch(name) for p in inc):
            continue
        if any(p.fullmatch(name) for p in exc):
            continue
        found.append(TorchLayer(name, mod))
    if not found:
        raise InvalidInputError(f"no prunable layer matches include={include!r} "
                                f"exclude={exclude!r}; prunable layers: {names}")
    return found


def batches(calib) -> Iterable[torch.Tensor]:
    """Model inputs from a tensor (one batch), or an iterable of tensors or of (x, ...) tuples
    (a DataLoader over a labelled dataset)."""
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if isinstance(calib, torch.Tensor):
        if calib.dim() == 0 or len(calib) > 0:  # a tensor of no rows holds no batch
            yield calib
        return
    try:
        it = iter(calib)
    except TypeError:
        raise InvalidInputError(f"calibration data must be a tensor or an iterable of batches, "
                                f"got {type(calib).__name__}") from None
    for item in it:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"a calibration batch must be a tensor, got "
                                    f"{type(x).__name__}")
        yield x


def accumulate(layer: TorchLayer, sums: list[GramSum], x_in: torch.Tensor,
               x_ref: torch.Tensor | None, max_rows: int | None, gen: torch.Generator) -> None:
    """Add one batch of a layer's inputs (and the dense reference's, for the cross term) to
    its per-group running sums. A convolution's patches are handed to the sums as strided
    views of its input, a piece of whole images at a time, for GramSum.add to copy once; the
    groups share a budget of PIECE buffered entries."""
    for s in sums:
        s.limit_buffer(PIECE // layer.groups)
    if max_rows is not None:
        refs = layer.rows(x_ref) if x_ref is not None else None
        for g, rows in enumerate(layer.rows(x_in)):
            r0 = None if refs is None else refs[g]
            if rows.shape[0] > max_rows:
                keep = torch.randperm(rows.shape[0], generator=gen)[:max_rows]
                rows = rows[keep]
                r0 = None if r0 is None else r0[keep]
            sums[g].add(rows.T, None if r0 is None else r0.T)
        return
    if isinstance(layer.module, nn.Linear):
        d = sums[0].d  # (TorchLayer.d's np.prod costs as much as a small layer's GEMM)
        sums[0].add(x_in.reshape(-1, d).T, None if x_ref is None else x_ref.reshape(-1, d).T)
        return
    if x_in.dim() == layer.module.weight.dim() - 1:  # an unbatched input: one image
        x_in = x_in.unsqueeze(0)
        x_ref = None if x_ref is None else x_ref.unsqueeze(0)
    c = layer.module.in_channels // layer.groups
    step = layer.items_per_piece(x_in)
    for start in range(0, max(len(x_in), 1), step):  # an empty batch still meets the kernel
        V = layer._patch_view(x_in[start:start + step])  # (C, kh, kw, N, OH, OW)
        V0 = None if x_ref is None else layer._patch_view(x_ref[start:start + step])
        for g, s in enumerate(sums):
            s.add(V[g * c:(g + 1) * c], None if V0 is None else V0[g * c:(g + 1) * c])


def finish(name: str, sums: list[GramSum]) -> list[Gram]:
    """The layer's float64 Grams; a NaN or Inf in its inputs is named by the layer."""
    if all(s.n == 0 for s in sums):
        raise InvalidInputError(f"layer {name} never ran in the forward pass over the "
                                f"calibration data (unused, or called outside forward): leave "
                                f"it out (exclude=...)")
    try:
        return [s.to_gram() for s in sums]
    except InvalidInputError as e:
        raise InvalidInputError(f"layer {name}: {e}") from None


def collect_grams(model: nn.Module, layers: Sequence[TorchLayer], calib, *,
                  max_rows: int | None = None, seed: int = 0,
                  reference: nn.Module | None = None, progress: bool = False,
                  gram_dtype: str = "float64") -> dict[str, list[Gram]]:
    """Run ``calib`` through ``model`` (eval mode, no grad) and accumulate, for every layer and
    group, the float64 Gram of its inputs. Memory beyond the model is the Grams themselves plus
    one batch: the inputs are never stored.

    max_rows : keep at most this many rows (patches) per batch and layer, drawn uniformly
        without replacement (seeded); None keeps all.
    reference : the original (dense) model, same module names. Each batch also runs through
        it, and the Grams track the cross term X_hat^T X between this model's layer inputs
        X_hat and the reference's X (the cascade statistics).
    progress : show a progress bar over the batches (tqdm, on stderr).
    gram_dtype : "float64" (the default) or "float32": the precision of each batch's products
        for a float32 model on the CPU (``torch_gram.GramSum``); the sums over batches are float64.
    """
    float32 = check_gram_dtype(gram_dtype) == "float32"
    check_int("max_rows", max_rows, allow_none=True)
    sums = {la.name: [GramSum(la.d, la.d if reference is not None else None, float32)
                      for _ in range(la.groups)] for la in layers}
    gen = torch.Generator().manual_seed(seed)
    calibrate(model, layers, calib,
              lambda la, x, x_ref: accumulate(la, sums[la.name], x, x_ref, max_rows, gen),
              reference=reference, progress=progress)
    return {name: finish(name, s) for name, s in sums.items()}


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside; afterwards every submodule's own training flag as it was (a frozen
    BatchNorm inside a model in training mode stays frozen)."""
    modes = [(mod, mod.training) for mod in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for mod, training in modes:
            mod.training = training


def calibrate(model: nn.Module, layers: Sequence[TorchLayer], calib,
              on_batch: Callable[[TorchLayer, torch.Tensor, torch.Tensor | None], None], *,
              reference: nn.Module | None = None, progress: bool = False) -> int:
    """Run every calibration batch through ``model`` (eval mode, no grad) and hand each
    layer's input for the batch to ``on_batch(layer, x, x_ref)``; ``x_ref`` is the same
    layer's input in ``reference`` (run first on the same batch), or None. Errors name the
    layer. ``progress`` shows a bar over the batches. Returns the batch count."""
    from tqdm.auto import tqdm

    ref_in: dict[str, torch.Tensor] = {}  # one batch of the reference's layer inputs

    def ref_hook(layer):
        def fn(_mod, inputs, _out):
            if layer.name in ref_in:  # the calls of the two networks could not be paired
                raise InvalidInputError(
                    f"module {layer.name} runs more than once per forward pass (shared or "
                    f"recurrent): the cascade's cross term needs one call per layer; use the "
                    f"parallel schedule or leave it out (exclude=...)")
            ref_in[layer.name] = inputs[0].detach()
        return fn

    def hook(layer):
        def fn(_mod, inputs, _out):
            x_ref = ref_in[layer.name] if reference is not None else None
            on_batch(layer, inputs[0].detach(), x_ref)
        return fn

    handles: list = []
    current = {"layer": None}  # the prunable layer last entered, to name it in an error
    seen = 0
    total = len(calib) if hasattr(calib, "__len__") and not isinstance(
        calib, (torch.Tensor, np.ndarray)) else None
    try:  # every hook is removed, whatever fails
        handles += [la.module.register_forward_hook(hook(la)) for la in layers]
        if reference is not None:
            ref_modules = dict(reference.named_modules())
            for la in layers:
                if la.name not in ref_modules:
                    raise InvalidInputError(f"the reference model has no module {la.name}")
                handles.append(ref_modules[la.name].register_forward_hook(ref_hook(la)))
        for net in (model, reference) if reference is not None else (model,):
            for la in find_layers(net):
                handles.append(la.module.register_forward_pre_hook(
                    lambda _m, _i, name=la.name: current.__setitem__("layer", name)))
        ref_mode = eval_mode(reference) if reference is not None else contextlib.nullcontext()
        with torch.no_grad(), eval_mode(model), ref_mode:
            for x in tqdm(batches(calib), total=total, desc="calibration", unit="batch",
                          leave=False, disable=not progress):
                current["layer"] = None
                ref_in.clear()
                try:
                    if reference is not None:
                        reference(x)
                    model(x)
                except InvalidInputError as e:  # raised by a hook
                    raise InvalidInputError(f"layer {current['layer']}: {e}") from None
                except (RuntimeError, ValueError, TypeError) as e:
                    where = f" at layer {current['layer']}" if current["layer"] else ""
                    raise InvalidInputError(
                        f"a calibration batch of shape {tuple(x.shape)} does not fit the "
                        f"model{where}: {e}") from None
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise InvalidInputError("the calibration data is empty")
    return seen


def write_back(layer: TorchLayer, group: int, W: np.ndarray, bias: np.ndarray | None) -> None:
    """Put one group's (m, d) weights (and bias) back into the module, in place, keeping its
    dtype and device."""
    w = layer.module.weight
    if W.shape != (layer.m, layer.d):
        raise InvalidInputError(f"{layer.name}: weights of shape {W.shape}, expected "
                                f"{(layer.m, layer.d)}")
    sl = slice(group * layer.m, (group + 1) * layer.m)
    with torch.no_grad():
        w[sl].copy_(torch.from_numpy(np.asarray(W)).reshape(w[sl].shape))
        if bias is not None and layer.module.bias is not None:
            layer.module.bias[sl].copy_(torch.from_numpy(np.asarray(bias)))


def apply_masks(layers: Sequence[TorchLayer], masks: dict[str, torch.Tensor]) -> None:
    """The ``torch.nn.utils.prune`` convention: each module gets ``weight_orig`` and
    ``weight_mask`` with the forward pre-hook, so fine-tuning keeps the zeros and
    ``prune.remove`` makes them permanent. ``masks`` maps layer names to boolean tensors of
    the weight's shape."""
    from torch.nn.utils import prune

    for la in layers:
        if la.name not in masks:
            continue
        mask = torch.as_tensor(masks[la.name])
        if tuple(mask.shape) != tuple(la.module.weight.shape):
            raise InvalidInputError(f"{la.name}: mask of shape {tuple(mask.shape)}, weight has "
                                    f"{tuple(la.module.weight.shape)}")
        prune.custom_from_mask(la.module, "weight", mask.to(la.module.weight.device))


class TorchBridge:
    """The ``layerwise.schedule.ModelBridge`` of a torch module and its calibration data."""

    def __init__(self, model: nn.Module, calib, layers: Sequence[TorchLayer], *,
                 max_rows: int | None = None, seed: int = 0,
                 keep_reference: bool = False, frontier: bool = True,
                 max_samples: int = 2048, progress: bool = False,
                 gram_dtype: str = "float64") -> None:
        import copy

        self.model, self.calib, self.max_rows, self.seed = model, calib, max_rows, seed
        self.gram_dtype = check_gram_dtype(gram_dtype)
        self.max_samples, self.progress = max_samples, progress
        self.by_name = {la.name: la for la in layers}
        # the cascade's cross term needs the dense network's inputs: a copy, taken before
        # anything is pruned (one more model in memory)
        self.reference = copy.deepcopy(model) if keep_reference else None
        # a sequential chain whose pruned layers are its own children: the cascade keeps the
        # activations at the frontier (both networks) instead of re-running the prefix
        # (exactly nn.Sequential: a subclass may have its own forward or constructor, which
        # slicing would call; and no module listed twice, which named_children skips)
        plain = type(model) is nn.Sequential and len({id(c) for c in model}) == len(model)
        children = dict(model.named_children()) if plain else {}
        self.position = {n: list(children).index(n) for n in self.by_name if n in children}
        self.frontier_ok = frontier and len(self.position) == len(self.by_name)
        self._front: tuple[int, list, list] | None = None

    def layer_names(self) -> list[str]:
        return list(self.by_name)

    def groups(self, name: str) -> int:
        return self.by_name[name].groups

    def weights(self, name: str, group: int):
        la = self.by_name[name]
        return la.weight(group), la.bias(group)

    def grams(self, names: list[str], cross: bool = False) -> dict[str, list[Gram]]:
        if cross and self.frontier_ok and len(names) == 1 and self.reference is not None:
            return {names[0]: self._frontier_grams(names[0])}
        return collect_grams(self.model, [self.by_name[n] for n in names], self.calib,
                             max_rows=self.max_rows, seed=self.seed,
                             reference=self.reference if cross else None,
                             progress=self.progress, gram_dtype=self.gram_dtype)

    def _frontier_grams(self, name: str) -> list[Gram]:
        """Advance both networks' cached activations from the frontier to ``name``'s input
        (running only the children in between), then accumulate its Grams from them."""
        layer, i = self.by_name[name], self.position[name]
        if self._front is None:
            xs = list(batches(self.calib))
            if not xs:
                raise InvalidInputError("the calibration data is empty")
            self._front = (0, xs, list(xs))
        j, xp, xr = self._front
        if i < j:  # not in forward order: fall back to a full pass
            return collect_grams(self.model, [layer], self.calib, max_rows=self.max_rows,
                                 seed=self.seed, reference=self.reference,
                                 gram_dtype=self.gram_dtype)
        with torch.no_grad(), eval_mode(self.model), eval_mode(self.reference):
            try:
                xp = [self.model[j:i](x) for x in xp]
                xr = [self.reference[j:i](x) for x in xr]
            except (RuntimeError, ValueError, TypeError) as e:
                raise InvalidInputError(f"a calibration batch does not fit the model before "
                                        f"layer {name}: {e}") from None
        self._front = (i, xp, xr)
        sums = [GramSum(layer.d, layer.d, self.gram_dtype == "float32")
                for _ in range(layer.groups)]
        gen = torch.Generator().manual_seed(self.seed)
        for x, x0 in zip(xp, xr, strict=True):
            try:
                accumulate(layer, sums, x, x0, self.max_rows, gen)
            except InvalidInputError as e:
                raise InvalidInputError(f"layer {name}: {e}") from None
        return finish(name, sums)

    def samples(self, names: list[str], cross: bool = False):
        """Each layer's sampled input rows per group, paired with the dense network's."""
        from layertrim.adapters.torch_samples import collect_samples

        return collect_samples(self.model, [self.by_name[n] for n in names], self.calib,
                               max_samples=self.max_samples, seed=self.seed,
                               reference=self.reference if cross else None,
                               progress=self.progress)

    def relu_layers(self, names: list[str]) -> set[str]:
        from layertrim.adapters.torch_samples import relu_layers

        first = next(iter(batches(self.calib)), None)
        if first is None:
            raise InvalidInputError("the calibration data is empty")
        net = self.reference if self.reference is not None else self.model
        return relu_layers(net, [TorchLayer(n, dict(net.named_modules())[n]) for n in names],
                           first)

    def write_back(self, name: str, group: int, W: np.ndarray, b: np.ndarray | None) -> None:
        write_back(self.by_name[name], group, W, b)

    def snapshot(self) -> dict:
        return {n: (la.module.weight.detach().clone(),
                    None if la.module.bias is None else la.module.bias.detach().clone())
                for n, la in self.by_name.items()}

    def restore(self, state: dict) -> None:
        with torch.no_grad():
            for n, (w, b) in state.items():
                self.by_name[n].module.weight.copy_(w)
                if b is not None:
                    self.by_name[n].module.bias.copy_(b)

    def fingerprint(self) -> str:
        from layertrim.adapters.torch_fingerprint import model_fingerprint

        return model_fingerprint(self.model)

    def calibration_fingerprint(self) -> str:
        from layertrim.adapters.torch_fingerprint import calibration_fingerprint

        extra = {} if self.gram_dtype == "float64" else {"gram_dtype": self.gram_dtype}
        return calibration_fingerprint(self.calib, max_rows=self.max_rows, seed=self.seed,
                                       **extra)


def prune_model(model: nn.Module, calib, *, sparsity, method: str = "l0-admm",
                schedule: str = "cascade", pattern: str = "layer", layers=None, exclude=None,
                executor=None, allocation: str = "global", max_rows: int | None = None,
                seed: int = 0, frontier: bool = True, max_samples: int = 2048,
                mask_convention: bool = False, checkpoint=None, resume=None, progress=False,
                gram_dtype: str = "float64", **solver_options):
    """Prune ``model`` in place, layer by layer, and return a
    :class:`layertrim.layerwise.report.PruneReport`.

    Parameters
    ----------
    model : the torch module (its dtype and device are kept).
    calib : calibration inputs: a tensor, or an iterable of tensors or of (x, ...) batches.
    sparsity : a fraction in [0, 1), or a dict by layer name.
    allocation : how a fractional ``sparsity`` is spread: "global" (the default: the fraction
        of all prunable weights, split by error-curve dynamic programming), "uniform" (that
        fraction in every layer) or "owl". A dict ``sparsity`` is used as given.
    method : a registered solver (see ``layertrim.methods()``). The per-sample ones (``nettrim``,
        ``nettrim-cvx``) see ``max_samples`` sampled input rows per layer (see
        ``layerwise/per_sample.py``); with them ``sparsity=None`` runs the authors' gain rule.
    schedule : "cascade" (each layer sees the already-pruned network) or "parallel".
    pattern : "layer", "row" or "N:M".
    layers, exclude : names or regexes of the layers to prune / to leave alone.
    executor : "local" (processes; the default), "serial", "ray", or an executor object
        (``LocalExecutor(workers=...)``, ``RayExecutor(address=...)``).
    max_rows : subsample at most this many input rows (patches) per batch and layer.
    seed : seeds that subsampling, the per-sample solvers' row samples, and a seeded solver
        (``random``), which gets a per-layer seed derived from it.
    gram_dtype : "float64" (exact products) or "float32" (a float32 CPU model's batch products
        in float32, summed in float64: 1.5-2x faster calibration, Grams within ~1e-7
        relative; avoid it when a layer has fewer calibration rows than inputs).
    mask_convention : also leave ``weight_orig``/``weight_mask`` (torch.nn.utils.prune).
    max_samples : input rows sampled per layer for the per-sample solvers (Net-Trim).
    frontier : in cascade on an ``nn.Sequential`` whose pruned layers are its children, keep
        both networks' activations at the current layer (memory: two copies of one layer's
        inputs over the calibration set) instead of re-running the prefix for every layer.
    checkpoint : a directory where each finished layer is saved as it arrives.
    resume : a checkpoint directory to continue: its finished layers are read back, not solved
        again (refused when the model, the calibration data or the settings differ).
    progress : True for progress bars (tqdm, on stderr) over the calibration batches and over
        the layers; or a callable ``progress(done, total, layer, result)``, called as each
        layer finishes (the calibration bars are then shown too).
    solver_options : passed to the solver.
    """
    from layertrim.layerwise.runner import progress_bar, takes_seed
    from layertrim.layerwise.schedule import run_schedule
    from layertrim.solvers import get_solver

    found = find_layers(model, include=layers, exclude=exclude)
    one_shot = not isinstance(calib, (torch.Tensor, np.ndarray)) and iter(calib) is calib
    if one_shot and schedule == "cascade":
        raise InvalidInputError("the cascade schedule runs the calibration data once per layer: "
                                "pass a list, a tensor or a DataLoader, not a one-shot iterator")
    if one_shot and get_solver(method).per_sample:
        raise InvalidInputError(f"method {method!r} runs the calibration data more than once: "
                                f"pass a list, a tensor or a DataLoader, not a one-shot iterator")
    for la in found:
        if hasattr(la.module, "weight_orig") or "weight" in getattr(
                la.module, "parametrizations", {}):
            raise InvalidInputError(
                f"layer {la.name}: its weight is computed (torch.nn.utils.prune's weight_orig * "
                f"weight_mask, or a parametrization), so written-back weights would not stick: "
                f"make it a plain parameter first (prune.remove(module, 'weight') or "
                f"parametrize.remove_parametrizations)")
        for pname, p in (("weight", la.module.weight), ("bias", la.module.bias)):
            if p is not None and not bool(torch.isfinite(p).all()):
                raise InvalidInputError(f"layer {la.name}: its {pname} contains NaN or Inf")
    if resume is not None:
        if checkpoint is not None and str(checkpoint) != str(resume):
            raise InvalidInputError(f"checkpoint={checkpoint!s} and resume={resume!s} differ: a "
                                    f"resumed run checkpoints into the directory it resumes")
        checkpoint = resume
    if one_shot and checkpoint is not None:
        calib = list(calib)  # fingerprinted, then calibrated on: it must be read twice
    bridge = TorchBridge(model, calib, found, max_rows=max_rows, seed=seed,
                         keep_reference=schedule == "cascade", frontier=frontier,
                         max_samples=max_samples, progress=bool(progress),
                         gram_dtype=gram_dtype)
    if takes_seed(method):  # the same seed drives the solver's own randomness
        solver_options["seed"] = seed
    bar = progress_bar(f"{method} {schedule}") if progress is True else (progress or None)
    report = run_schedule(bridge, sparsity=sparsity, method=method, schedule=schedule,
                          pattern=pattern, executor=executor, allocation=allocation,
                          checkpoint=checkpoint, resume=resume is not None, progress=bar,
                          **solver_options)
    if mask_convention:
        apply_masks(found, {la.name: la.module.weight.detach() != 0 for la in found})
    return report
