"""PyTorch bridge: find the prunable layers of a module (``torch_layers``), stream their
calibration inputs into Gram accumulators (``torch_calib``), solve, and write the pruned
weights back in place (this module: ``write_back``, ``TorchBridge``, ``prune_model``).

Only this package imports torch; the solvers see numpy arrays.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from layertrim.adapters.torch_calib import (  # noqa: F401  (re-exported: the public names)
    Inputs,
    LayerSums,
    accumulate,
    batches,
    calibrate,
    collect_grams,
    eval_mode,
    finish,
    forward_order,
    input_converter,
    model_input,
    output_errors,
)
from layertrim.adapters.torch_gram import check_gram_dtype
from layertrim.adapters.torch_layers import (  # noqa: F401
    PIECE,
    PRUNABLE,
    TorchLayer,
    find_layers,
    stream_generator,
)
from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.validate import check_bool


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


def _reference_copy(model: nn.Module) -> nn.Module:
    """The cascade's copy of the dense network; a model that cannot be deep-copied (a lock, a
    tensor attribute with autograd history) is refused by name."""
    import copy

    try:
        return copy.deepcopy(model)
    except Exception as e:
        raise InvalidInputError(f"the cascade schedule keeps a copy of the dense model, and "
                                f"this model cannot be deep-copied ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); use "
                                f"schedule='parallel'") from None


class TorchBridge:
    """The ``layerwise.schedule.ModelBridge`` of a torch module and its calibration data."""

    def __init__(self, model: nn.Module, calib, layers: Sequence[TorchLayer], *,
                 max_rows: int | None = None, seed: int = 0,
                 keep_reference: bool = False, frontier: bool = True,
                 max_samples: int = 2048, progress: bool = False,
                 gram_dtype: str = "float32") -> None:

        self.model, self.calib, self.max_rows, self.seed = model, calib, max_rows, seed
        self.gram_dtype = check_gram_dtype(gram_dtype)
        self.max_samples, self.progress = max_samples, progress
        self.vs_dense = True  # output_errors measures against the dense network
        self.by_name = {la.name: la for la in layers}
        # the cascade's cross term needs the dense network's inputs: a copy, taken before
        # anything is pruned (one more model in memory)
        self.reference = _reference_copy(model) if keep_reference else None
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
            grams = self._frontier_grams(names[0])
            if grams is not None:
                return {names[0]: grams}
        return collect_grams(self.model, [self.by_name[n] for n in names], self.calib,
                             max_rows=self.max_rows, seed=self.seed,
                             reference=self.reference if cross else None,
                             progress=self.progress, gram_dtype=self.gram_dtype)

    def _frontier_grams(self, name: str) -> list[Gram] | None:
        """Advance both networks' cached activations from the frontier to ``name``'s input
        (running only the children in between), then accumulate its Grams from them; None
        where the cache cannot serve (a layer behind the frontier, batches that are not one
        tensor each), for a full pass instead."""
        layer, i = self.by_name[name], self.position[name]
        if self._front is None:
            to_model = input_converter(self.model)
            xs = []
            for x in batches(self.calib):
                if not isinstance(x, torch.Tensor):  # keyword or several inputs: a slice of
                    self.frontier_ok = False  # the Sequential takes one, so no cache
                    return None
                xs.append(to_model(x))
            if not xs:
                raise InvalidInputError("the calibration data is empty")
            self._front = (0, xs, list(xs))
        j, xp, xr = self._front
        if i < j:  # not in forward order
            return None
        with torch.no_grad(), eval_mode(self.model), eval_mode(self.reference):
            try:
                xp = [self.model[j:i](x) for x in xp]
                xr = [self.reference[j:i](x) for x in xr]
            except (RuntimeError, ValueError, TypeError) as e:
                raise InvalidInputError(f"a calibration batch does not fit the model before "
                                        f"layer {name}: {e}") from None
        self._front = (i, xp, xr)
        # the rows collect_grams would draw
        sums = LayerSums(layer, True, self.gram_dtype == "float32", self.max_rows,
                         stream_generator(self.seed, name))
        for x, x0 in zip(xp, xr, strict=True):
            try:
                layer.check_input(x)
                layer.check_input(x0)
            except InvalidInputError as e:
                raise InvalidInputError(f"a calibration batch does not fit the model at layer "
                                        f"{name}: {e}") from None
            try:
                sums.add(x, x0)
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
                           model_input(net, first))

    def output_errors(self, names: list[str], dense: dict | None = None
                      ) -> dict[str, list[float]] | None:
        """Each layer's output in the pruned model against the dense one's, relative, per group
        (``torch_calib.output_errors``). The dense network is the copy the cascade keeps, or
        else one made from ``dense`` (a ``snapshot`` taken before pruning); None with
        neither."""
        if not self.vs_dense:
            return None
        ref = self.reference
        if ref is None:
            if dense is None:
                return None
            ref = self._dense_copy(dense)
        return output_errors(self.model, ref, [self.by_name[n] for n in names], self.calib)

    def _dense_copy(self, dense: dict) -> nn.Module:
        """The model with the snapshot's weights: a deep copy whose pruned layers take the
        snapshot's tensors themselves (deepcopy's memo), so no pruned weight is copied."""
        import copy

        memo: dict = {}
        for n, (w, b) in dense.items():
            mod = self.by_name[n].module
            memo[id(mod.weight)] = nn.Parameter(w, requires_grad=False)
            if b is not None:
                memo[id(mod.bias)] = nn.Parameter(b, requires_grad=False)
        return copy.deepcopy(self.model, memo)

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


def _one_shot(calib) -> bool:
    """Whether ``calib`` is an iterator that one pass uses up (a generator), not a container
    or a single batch; something not iterable at all is left for ``batches`` to name."""
    if isinstance(calib, (torch.Tensor, np.ndarray, Mapping, Inputs)):
        return False
    try:
        return iter(calib) is calib
    except TypeError:
        return False


def prune_model(model: nn.Module, calib, *, sparsity, method: str = "l0-admm",
                schedule: str = "cascade", pattern: str = "layer", layers=None, exclude=None,
                executor=None, allocation: str = "global", max_rows: int | None = None,
                seed: int = 0, frontier: bool = True, max_samples: int = 2048,
                mask_convention: bool = False, checkpoint=None, resume=None, progress=False,
                gram_dtype: str = "float32", vs_dense: bool = True, **solver_options):
    """Prune ``model`` in place, layer by layer, and return a
    :class:`layertrim.layerwise.report.PruneReport`.

    Parameters
    ----------
    model : the torch module (its dtype and device are kept).
    calib : calibration inputs: a tensor, or an iterable of tensors, of (x, ...) batches, of
        dicts of keyword inputs, or of ``Inputs(x, mask, ...)`` for a model of several inputs.
    sparsity : a fraction in [0, 1), or a dict by layer name; without ``layers``, a dict
        prunes only the layers it names (the others stay dense).
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
    gram_dtype : "float32" (the default: a float32 CPU model's batch products in float32,
        summed in float64, 1.5x faster calibration, Grams within ~1e-7 relative; a
        rank-deficient layer's Gram may be indefinite by ~1e-6 of its mean diagonal, which the
        solvers damp) or "float64" (exact products, also for float32 models). Other dtypes
        and CUDA models are always multiplied in float64.
    mask_convention : also leave ``weight_orig``/``weight_mask`` (torch.nn.utils.prune).
    vs_dense : measure each layer's output against the dense network's after the prune
        (``rel_error_dense``): one more pass of both networks over ``calib``, and in parallel
        a copy of the model's unpruned parameters (the pruned layers' dense weights are the
        rollback snapshot's). False skips it (``--option vs_dense=False`` on the CLI).
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
    from layertrim.layerwise.schedule import check_sparsity_values, run_schedule
    from layertrim.solvers import get_solver

    if isinstance(sparsity, dict) and layers is None:  # the named layers are the pruned ones
        check_sparsity_values(sparsity)
        if not sparsity:
            raise InvalidInputError("the sparsity dict is empty: name the layers to prune")
        prunable = [la.name for la in find_layers(model, quiet=True)]
        unknown = [name for name in sparsity if name not in prunable]
        if unknown:
            raise InvalidInputError(f"unknown layers {unknown} in the sparsity dict; the "
                                    f"model's prunable layers: {prunable}")
        layers = [re.escape(str(name)) for name in sparsity]
    found = find_layers(model, include=layers, exclude=exclude)
    one_shot = _one_shot(calib)
    if one_shot and schedule == "cascade":
        raise InvalidInputError("the cascade schedule runs the calibration data once per layer: "
                                "pass a list, a tensor or a DataLoader, not a one-shot iterator")
    if one_shot and get_solver(method).per_sample:
        raise InvalidInputError(f"method {method!r} runs the calibration data more than once: "
                                f"pass a list, a tensor or a DataLoader, not a one-shot iterator")
    if mask_convention:  # weight_orig on one module, the plain shared tensor on another:
        held = {}  # such a state_dict loads back into neither
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                held.setdefault(id(p), []).append(f"{mname}.{pname}" if mname else pname)
        tied = [held[id(la.module.weight)] for la in found
                if len(held.get(id(la.module.weight), [])) > 1]
        if tied:
            raise InvalidInputError(f"mask_convention cannot keep masks on tied weights "
                                    f"({tied[0]} are one tensor): prune without it")
    for la in found:
        computed = hasattr(la.module, "weight_orig") or "weight" in getattr(
            la.module, "parametrizations", {}) or hasattr(la.module, "weight_v")
        if computed:
            raise InvalidInputError(
                f"layer {la.name}: its weight is computed (torch.nn.utils.prune's weight_orig * "
                f"weight_mask, weight_norm's weight_g and weight_v, or a parametrization), so "
                f"written-back weights would not stick: make it a plain parameter first "
                f"(prune.remove(module, 'weight'), torch.nn.utils.remove_weight_norm or "
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
    vs_dense = check_bool("vs_dense", vs_dense)
    if schedule == "cascade":  # each layer after those that feed it, whatever the
        first = next(iter(batches(calib)), None)  # registration order
        if first is not None:
            found = forward_order(model, found, first)
    bridge = TorchBridge(model, calib, found, max_rows=max_rows, seed=seed,
                         keep_reference=schedule == "cascade", frontier=frontier,
                         max_samples=max_samples, progress=bool(progress),
                         gram_dtype=gram_dtype)
    bridge.vs_dense = vs_dense
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
