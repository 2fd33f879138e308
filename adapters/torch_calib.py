"""Calibration of PyTorch models: run the calibration batches through the model (eval mode, no
grad) with forward hooks on the prunable layers, and stream each layer's inputs into its Gram
accumulators (``torch_gram.GramSum``); with a dense reference model alongside, the cascade's
cross term too. The inputs are never stored: memory beyond the model is the Grams plus one
batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from layertrim.adapters import torch_layers
from layertrim.adapters.torch_conv_gram import PixelGramSum, pixel_plan
from layertrim.adapters.torch_gram import GramSum, check_gram_dtype
from layertrim.adapters.torch_layers import TorchLayer, find_layers, stream_generator
from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.validate import check_int

INPUT_KEYS = ("x", "X", "inputs", "input", "data")  # a dict batch's model input


class Inputs:
    """One calibration batch for a model that takes more than one input: the model is called
    as ``model(*args, **kwargs)``. A plain tuple cannot say this, since a DataLoader's tuples
    are (inputs, labels); a dict is keyword inputs alone.

    >>> calib = [Inputs(x, mask) for x, mask in zip(xs, masks)]  # model(x, mask)
    """

    __slots__ = ("args", "kwargs")

    def __init__(self, *args, **kwargs) -> None:
        self.args = tuple(torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args)
        self.kwargs = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                       for k, v in kwargs.items()}
        if not any(isinstance(v, torch.Tensor) for v in (*self.args, *self.kwargs.values())):
            raise InvalidInputError("Inputs(...) holds no tensor: a calibration batch needs "
                                    "the model's input tensors")

    def __repr__(self) -> str:
        return f"Inputs({describe(self)})"


def forward_order(model: nn.Module, layers: Sequence[TorchLayer], x: torch.Tensor
                  ) -> list[TorchLayer]:
    """``layers`` in the order the forward pass first calls them (one pass on ``x``, eval
    mode, no grad): registration order can differ (a head defined before the body), and the
    cascade must prune a layer only after the layers that feed it. Layers that never run keep
    their place after the others (calibration then names them)."""
    seen: dict[str, int] = {}

    def hook(name):
        def fn(_mod, _inputs):
            seen.setdefault(name, len(seen))
        return fn

    handles = [la.module.register_forward_pre_hook(hook(la.name)) for la in layers]
    try:
        x = model_input(model, x)
        with torch.no_grad(), eval_mode(model):
            run_model(model, x)
    except Exception:  # a batch that does not fit: calibration reports it, by layer
        return list(layers)
    finally:
        for h in handles:
            h.remove()
    return sorted(layers, key=lambda la: seen.get(la.name, len(layers)))


def labelled_pair(obj) -> bool:
    """Whether ``obj`` is one (inputs, targets) pair rather than two batches: a 2-tuple of an
    Inputs and a tensor, of keyword inputs (a dict) and a label vector as long as their batch, or of
    tensors of equal length whose second is a vector (or a scalar batch) of integer labels,
    or of float targets beside inputs of more dimensions (two batches of one model's inputs
    have the same number of dimensions). Two float vectors of one length could be either, and
    are refused rather than guessed."""
    if not (isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[1], torch.Tensor)):
        return False
    x, y = obj
    if isinstance(x, Inputs):  # a tensor beside a model's several inputs can only be targets
        return True
    if isinstance(x, Mapping):  # (keyword inputs, labels): labels as long as their batch
        rows = {len(v) for v in x.values() if isinstance(v, torch.Tensor) and v.dim()}
        return y.dim() == 1 and rows == {len(y)}
    if (not isinstance(x, torch.Tensor) or y.dim() > 1 or x.dim() == 0 or y.dim() == 0
            or len(x) != len(y)):
        return False
    if y.is_floating_point() and x.dim() == y.dim() and x.is_floating_point():
        raise InvalidInputError(
            f"a pair of two float vectors of length {len(x)} could be (inputs, targets) or two "
            f"batches of one-dimensional inputs: pass the inputs alone, or a list of batches")
    return not y.is_floating_point() or x.dim() > y.dim()


Batch = torch.Tensor | dict | Inputs  # dict: keyword inputs, model(**batch); Inputs: several


def batches(calib) -> Iterable[Batch]:
    """Model inputs from a tensor (one batch), an (inputs, labels) pair (``labelled_pair``), a
    dict (one batch), or an iterable of tensors, of (x, ...) tuples (a DataLoader over a
    labelled dataset) or of dicts. A dict's INPUT_KEYS entry is the input; a dict without one
    is the model's keyword inputs (``input_ids=..., attention_mask=...``), passed whole."""
    if isinstance(calib, np.ndarray):
        calib = torch.from_numpy(calib)
    if isinstance(calib, torch.Tensor):
        if calib.dim() == 0 or len(calib) > 0:  # a tensor of no rows holds no batch
            yield calib
        return
    if labelled_pair(calib):
        calib = [calib[0]]  # one labelled batch, not two batches
    elif isinstance(calib, (Mapping, Inputs)):  # one batch (iterating a dict gives its keys)
        calib = [calib]
    try:
        it = iter(calib)
    except TypeError:
        raise InvalidInputError(f"calibration data must be a tensor or an iterable of batches, "
                                f"got {type(calib).__name__}") from None
    for item in it:
        x = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(x, Inputs):  # the model's several inputs
            yield x
            continue
        if isinstance(x, Mapping):  # a DataLoader over a dataset of dicts; a tokenizer's
            # BatchEncoding (a UserDict)
            x = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in x.items()}
            x = next((x[k] for k in INPUT_KEYS if k in x), x)
            if isinstance(x, dict):
                if not any(isinstance(v, torch.Tensor) for v in x.values()):
                    raise InvalidInputError(f"a calibration batch given as a dict must hold "
                                            f"tensors (the model's keyword inputs), got keys "
                                            f"{sorted(map(str, x))} with no tensor")
                yield x
                continue
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise InvalidInputError(f"a calibration batch must be a tensor (or a tuple or a "
                                    f"dict with one, under one of {INPUT_KEYS}, or a dict of "
                                    f"keyword inputs), got {type(x).__name__}")
        yield x


def run_model(model: nn.Module, x: Batch):
    """The model on one batch: keyword inputs for a dict, the arguments of an Inputs, else one
    positional input."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, Inputs):
        return model(*x.args, **x.kwargs)
    return model(x)


def describe(x: Batch) -> str:
    """A batch's shape for an error message."""
    def shape(v) -> str:
        return f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__

    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in x.items()
                               if isinstance(v, torch.Tensor)) + "}"
    if isinstance(x, Inputs):
        return "inputs (" + ", ".join([shape(v) for v in x.args] + [
            f"{k}={shape(v)}" for k, v in x.kwargs.items()]) + ")"
    return f"shape {tuple(x.shape)}"


def model_input(model: nn.Module, x: Batch) -> Batch:
    """One calibration batch as the model takes it (``input_converter``)."""
    return input_converter(model)(x)


def input_converter(model: nn.Module) -> Callable[[Batch], Batch]:
    """What turns a calibration batch into what the model takes, when the model says so
    unambiguously: on its device when all its parameters share one, and floating inputs in
    its floating dtype when all its floating parameters share one (a float16 model given
    float32 batches, as ``layertrim prune`` converts them). A model of mixed dtypes or
    devices (a float32 head over a float16 body, a model split across GPUs, parameters
    offloaded to ``meta``) gets the batch as given. Integer inputs (token ids) keep their
    dtype; the tensors inside a dict, list or tuple are converted likewise. Read from the
    parameters once, for a whole pass."""
    params = list(model.parameters())
    devices = {q.device for q in params}
    dtypes = {q.dtype for q in params if q.is_floating_point()}
    device = devices.pop() if len(devices) == 1 else None
    if device is not None and device.type == "meta":
        device = None
    dtype = dtypes.pop() if len(dtypes) == 1 else None
    if device is None and dtype is None:
        return lambda x: x
    return lambda x: _converted(x, dtype, device)


def _converted(x, dtype, device):
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        return x if device is None or x.device == device else x.to(device)
    if isinstance(x, dict):
        return {k: _converted(v, dtype, device) for k, v in x.items()}
    if isinstance(x, Inputs):
        return Inputs(*_converted(x.args, dtype, device), **_converted(x.kwargs, dtype, device))
    if isinstance(x, (list, tuple)):
        return type(x)(_converted(v, dtype, device) for v in x)
    return x


def accumulate(layer: TorchLayer, sums: list[GramSum], x_in: torch.Tensor,
               x_ref: torch.Tensor | None, max_rows: int | None, gen: torch.Generator) -> None:
    """Add one batch of a layer's inputs (and the dense reference's, for the cross term) to
    its per-group running sums. A convolution's patches are handed to the sums as strided
    views of its input, a piece of whole images at a time, for GramSum.add to copy once; the
    groups share a budget of PIECE buffered entries."""
    for s in sums:
        s.limit_buffer(torch_layers.PIECE // layer.groups)  # read at call time (tests lower it)
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


class LayerSums:
    """One layer's running statistics: per group a GramSum of its rows (a convolution's
    patches), or for a convolution over small feature maps the Grams of its input images
    (``torch_conv_gram``), chosen at the first batch; a batch of another shape than that
    one's (a fully convolutional model fed several sizes) goes the patch route."""

    def __init__(self, layer: TorchLayer, cross: bool, float32: bool, max_rows: int | None,
                 gen: torch.Generator) -> None:
        self.layer, self.cross, self.float32 = layer, cross, float32
        self.max_rows, self.gen = max_rows, gen
        self.groups = [GramSum(layer.d, layer.d if cross else None, float32)
                       for _ in range(layer.groups)]
        self.pixels: PixelGramSum | None = None
        # rows drawn at random are patches: they keep the patch route
        self._planned = max_rows is not None or isinstance(layer.module, nn.Linear)
        # a Linear layer's rows, whole and without a cross term: GramSum.add_rows directly
        self._rows_only = isinstance(layer.module, nn.Linear) and max_rows is None and not cross

    @property
    def n(self) -> int:
        return sum(s.n for s in self.groups) + (0 if self.pixels is None else self.pixels.n)

    def add(self, x_in: torch.Tensor, x_ref: torch.Tensor | None) -> None:
        if self._rows_only:
            s = self.groups[0]
            s.add_rows(x_in if x_in.dim() == 2 else x_in.reshape(-1, s.d))
            return
        if not self._planned:
            plan = pixel_plan(self.layer, x_in, self.cross, self.float32)
            if plan is not None:
                self.pixels = PixelGramSum(self.layer, plan, self.cross, self.float32)
            self._planned = True
        if self.pixels is not None and self.pixels.fits(x_in) and (
                x_ref is None or self.pixels.fits(x_ref)):
            self.pixels.add(x_in, x_ref)
        else:
            accumulate(self.layer, self.groups, x_in, x_ref, self.max_rows, self.gen)

    def to_grams(self) -> list[Gram]:
        grams = [s.to_gram() for s in self.groups]
        if self.pixels is None or self.pixels.n == 0:
            return grams
        pixel_grams = self.pixels.to_grams()
        for g, p in zip(grams, pixel_grams, strict=True):
            if g.n:  # both routes saw batches: their sums add up
                p.add_stats(g.H, g.sum, g.n, g.cross, g.sum0)
        return pixel_grams


def finish(name: str, sums: LayerSums) -> list[Gram]:
    """The layer's float64 Grams; a NaN or Inf in its inputs is named by the layer."""
    if sums.n == 0:
        raise InvalidInputError(f"layer {name} never ran in the forward pass over the "
                                f"calibration data (unused, or called outside forward): leave "
                                f"it out (exclude=...)")
    try:
        return sums.to_grams()
    except InvalidInputError as e:
        raise InvalidInputError(f"layer {name}: {e}") from None


def collect_grams(model: nn.Module, layers: Sequence[TorchLayer], calib, *,
                  max_rows: int | None = None, seed: int = 0,
                  reference: nn.Module | None = None, progress: bool = False,
                  gram_dtype: str = "float32") -> dict[str, list[Gram]]:
    """Run ``calib`` through ``model`` (eval mode, no grad) and accumulate, for every layer and
    group, the float64 Gram of its inputs. Memory beyond the model is the Grams themselves plus
    one batch: the inputs are never stored.

    max_rows : keep at most this many rows (patches) per batch and layer, drawn uniformly
        without replacement (seeded); None keeps all.
    reference : the original (dense) model, same module names. Each batch also runs through
        it, and the Grams track the cross term X_hat^T X between this model's layer inputs
        X_hat and the reference's X (the cascade statistics).
    progress : show a progress bar over the batches (tqdm, on stderr).
    gram_dtype : "float32" (the default) or "float64": the precision of each batch's products
        for a float32 model on the CPU (``torch_gram.GramSum``, which says what float32
        rounding does to the Gram); the sums over batches are float64.
    """
    float32 = check_gram_dtype(gram_dtype) == "float32"
    check_int("max_rows", max_rows, allow_none=True)
    sums = {la.name: LayerSums(la, reference is not None, float32, max_rows,
                               stream_generator(seed, la.name)) for la in layers}
    calibrate(model, layers, calib, lambda la, x, x_ref: sums[la.name].add(x, x_ref),
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


def _positional(layer: TorchLayer, inputs: tuple) -> torch.Tensor:
    """A layer's input as its forward hook sees it: the first positional argument (a call
    by keyword, ``layer(input=x)``, leaves the hook none)."""
    if not inputs:
        raise InvalidInputError(f"layer {layer.name} is called with its input as a keyword "
                                f"argument, which forward hooks cannot see: call it "
                                f"positionally, or leave it out (exclude=...)")
    return inputs[0]


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
            current["layer"] = layer.name
            if layer.name in ref_in:  # the calls of the two networks could not be paired
                raise InvalidInputError(
                    f"module {layer.name} runs more than once per forward pass (shared or "
                    f"recurrent): the cascade's cross term needs one call per layer; use the "
                    f"parallel schedule or leave it out (exclude=...)")
            ref_in[layer.name] = _positional(layer, inputs).detach()
        return fn

    def hook(layer):
        def fn(_mod, inputs, _out):
            current["layer"] = layer.name
            x_ref = ref_in[layer.name] if reference is not None else None
            on_batch(layer, _positional(layer, inputs).detach(), x_ref)
        return fn

    handles: list = []
    to_model = input_converter(model)
    current = {"layer": None}  # the layer whose hook runs, to name it in its error
    seen = 0
    total = len(calib) if hasattr(calib, "__len__") and not isinstance(
        calib, (torch.Tensor, np.ndarray, Mapping)) else None
    try:  # every hook is removed, whatever fails
        handles += [la.module.register_forward_hook(hook(la)) for la in layers]
        if reference is not None:
            ref_modules = dict(reference.named_modules())
            for la in layers:
                if la.name not in ref_modules:
                    raise InvalidInputError(f"the reference model has no module {la.name}")
                handles.append(ref_modules[la.name].register_forward_hook(ref_hook(la)))
        ref_mode = eval_mode(reference) if reference is not None else contextlib.nullcontext()
        with torch.no_grad(), eval_mode(model), ref_mode:
            for x in tqdm(batches(calib), total=total, desc="calibration", unit="batch",
                          leave=False, disable=not progress):
                current["layer"] = None
                ref_in.clear()
                try:
                    x = to_model(x)
                    if reference is not None:
                        run_model(reference, x)
                    run_model(model, x)
                except InvalidInputError as e:  # raised by a hook
                    raise InvalidInputError(f"layer {current['layer']}: {e}") from None
                except (RuntimeError, ValueError, TypeError) as e:
                    for h in handles:  # nothing may be added twice by the re-run below
                        h.remove()
                    nets = (model,) if reference is None else (reference, model)
                    failed = _layer_that_fails(nets, x)
                    where = f" at layer {failed}" if failed else ""
                    raise InvalidInputError(
                        f"a calibration batch of {describe(x)} does not fit the "
                        f"model{where}: {e}") from None
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise InvalidInputError("the calibration data is empty")
    return seen


def _layer_that_fails(nets: Sequence[nn.Module], x) -> str | None:
    """Run a batch that failed again, through hooks that only note each prunable layer entered:
    the one it fails in (None if it is in no prunable layer, or does not fail again). Only on
    the error path, so that the calibration's passes carry no hook per layer for it."""
    entered: dict[str, str | None] = {"layer": None}
    handles = [la.module.register_forward_pre_hook(
        lambda _m, _i, name=la.name: entered.__setitem__("layer", name))
        for net in nets for la in find_layers(net, quiet=True)]
    try:
        for net in nets:
            run_model(net, x)
    except Exception:  # noqa: BLE001 - the error itself was reported by the caller
        return entered["layer"]
    finally:
        for h in handles:
            h.remove()
    return None



def output_errors(model: nn.Module, reference: nn.Module, layers: Sequence[TorchLayer],
                  calib) -> dict[str, list[float]]:
    """Per layer and group: ||out - out_ref||^2 / ||out_ref||^2 over the calibration data,
    where out is the layer's output in ``model`` and out_ref the same layer's in
    ``reference`` (the dense network) on the same batch: how far pruning everything up to and
    including the layer has moved its output. One pass of both networks."""
    # a module called more than once per forward pass: its calls are paired in order
    ref_out: dict[str, list[torch.Tensor]] = {}
    sums = {la.name: np.zeros((la.groups, 2)) for la in layers}

    def per_group(la: TorchLayer, t: torch.Tensor) -> torch.Tensor:
        # channels last for a Linear; for a convolution second, or first in an unbatched
        # output (C, H, W); one row per group
        if not isinstance(la.module, nn.Linear):
            t = t.movedim(0 if t.dim() == la.module.weight.dim() - 1 else 1, -1)
        return t.reshape(-1, la.groups, t.shape[-1] // la.groups).transpose(0, 1).reshape(
            la.groups, -1).double().cpu()

    def ref_hook(layer):
        def fn(_mod, _inputs, out):
            ref_out.setdefault(layer.name, []).append(out.detach())
        return fn

    def on_output(layer):
        def fn(_mod, _inputs, out):
            if ref_out.get(layer.name):
                a = per_group(layer, out.detach())
                b = per_group(layer, ref_out[layer.name].pop(0))
                sums[layer.name][:, 0] += ((a - b) ** 2).sum(1).numpy()
                sums[layer.name][:, 1] += (b ** 2).sum(1).numpy()
        return fn

    ref_modules = dict(reference.named_modules())
    handles = [la.module.register_forward_hook(on_output(la)) for la in layers]
    handles += [ref_modules[la.name].register_forward_hook(ref_hook(la)) for la in layers]
    seen = 0
    to_model = input_converter(model)
    try:
        with torch.no_grad(), eval_mode(model), eval_mode(reference):
            for x in batches(calib):
                x = to_model(x)
                ref_out.clear()
                run_model(reference, x)
                run_model(model, x)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:  # a one-shot iterator, used up by the calibration pass: no figure, not 0
        raise InvalidInputError("the calibration data held no batch for the measurement (a "
                                "one-shot iterator is used up by the calibration pass; a list "
                                "or a DataLoader can be read again)")
    return {name: [float(e / r) if r > 0 else float(e > 0) for e, r in s]
            for name, s in sums.items()}
