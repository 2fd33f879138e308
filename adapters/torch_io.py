"""Load and save whole PyTorch models: a state_dict or safetensors file with the callable that
builds the architecture, TorchScript (its weights, into the eager architecture), or a pickled
module (only with an explicit trust flag: unpickling runs code). Writes are atomic and never
replace the input.
"""

from __future__ import annotations

import importlib
import io
import os
import re
import sys
import zipfile
from pathlib import Path

import torch
from torch import nn

from layertrim.adapters.torch_calib import INPUT_KEYS, labelled_pair
from layertrim.atomic import _write_atomically, check_not_input
from layertrim.errors import InvalidInputError

FORMATS = ("state_dict", "safetensors", "torchscript", "pickle")


def build_arch(spec: str) -> nn.Module:
    """``module:callable`` -> the module returned by calling it without arguments. A module in
    the current directory is found as ``python -m`` would find it (the installed ``layertrim``
    script does not have the directory on its path); anything the import or the call raises
    becomes an error that names --arch."""
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InvalidInputError(f"--arch must look like module:callable, got {spec!r}")
    mod_name, fn_name = spec.split(":")
    try:
        module = _import_from_cwd(mod_name)
    except ImportError as e:
        raise InvalidInputError(f"--arch {spec}: cannot import {mod_name} ({e})") from None
    except Exception as e:  # a syntax error, or the module's own code failing on import
        raise InvalidInputError(f"--arch {spec}: importing {mod_name} failed: "
                                f"{type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise InvalidInputError(f"--arch {spec}: {mod_name} has no callable {fn_name!r}")
    try:
        model = fn()
    except Exception as e:
        raise InvalidInputError(f"--arch {spec}: calling {fn_name}() failed: "
                                f"{type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise InvalidInputError(f"--arch {spec} returned {type(model).__name__}, not a module")
    return model


def _import_from_cwd(mod_name: str):
    """importlib.import_module, retried with the current directory on sys.path when the
    package itself is what was not found (``_from_cwd``)."""
    return _from_cwd(lambda: importlib.import_module(mod_name), mod_name.split(".")[0])


def _unpickle(path):
    """A pickled module, its classes found as --arch modules are: from the current directory
    too (the installed console script's sys.path lacks it, so `layertrim inspect` could not
    read back a pickle that `prune` wrote)."""
    def load():
        with open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=False)

    return _from_cwd(load)


def _from_cwd(load, top: str | None = None):
    """``load()``, retried once with the current directory on sys.path when a module (the
    package ``top``, if given) was not found and that directory is not on the path already.
    The path is left extended: the module may import its neighbours later."""
    try:
        return load()
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if not e.name or (top is not None and e.name != top) or cwd in sys.path \
                or "" in sys.path:
            raise
        sys.path.insert(0, cwd)
        return load()


def _first_line(e: Exception) -> str:
    """The gist of a loader's error (some come without a message; torch's carry terminal
    colour codes, which a log file shows as junk)."""
    lines = [ln for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(e)).splitlines() if ln.strip()]
    return lines[0].strip() if lines else type(e).__name__


def _is_safetensors(path: Path) -> bool:
    """By content, not by name: 8 bytes little-endian header length, then a JSON header that
    fits in the file (a model saved as safetensors under a .pt name still loads)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") <= size - 8


def detect_format(path: Path) -> str:
    """From the content; the name decides only for a file that is none of them (so that a
    broken .safetensors file is reported as such)."""
    if _is_safetensors(path):
        return "safetensors"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
                return "torchscript"
        return "state_dict"
    if path.suffix == ".safetensors":
        return "safetensors"
    return "state_dict"  # or a legacy pickle / pickled module: told apart when loading


def load_model(path, *, arch: str | None = None,
               trust_pickle: bool = False) -> tuple[nn.Module, str]:
    """Returns (model, format). A state_dict, safetensors or TorchScript file needs ``arch``;
    a pickled module needs ``trust_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"cannot read {path}: "
                                f"{'a directory' if path.is_dir() else 'no such file'}")
    fmt = detect_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:
            raise InvalidInputError(f"cannot read {path} as safetensors: {e}") from None
    elif fmt == "torchscript":
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise InvalidInputError(f"cannot read {path} as TorchScript: "
                                    f"{_first_line(e)}") from None
        if arch is None:
            raise InvalidInputError(
                f"{path} is TorchScript: scripted modules run no forward hooks, so give --arch "
                f"to rebuild the eager architecture; its weights are then loaded into it")
    else:
        try:
            with open(path, "rb") as f:  # a file object: torch reads no meaning into the name
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            if not trust_pickle and not _refused_by_weights_only(e):
                raise InvalidInputError(f"cannot read {path}: {_first_line(e)} (a damaged or "
                                        f"truncated file, or not a PyTorch file)") from None
            if not trust_pickle:
                raise InvalidInputError(
                    f"{path} is not a plain state_dict (weights-only loading refused it: "
                    f"{_first_line(e)}); if it is a pickled module you trust, pass "
                    f"--trust-pickle (unpickling runs code)") from None
            try:
                model = _unpickle(path)
            except Exception as e2:
                raise InvalidInputError(f"cannot read {path} as a state_dict or as a pickled "
                                        f"module: {_first_line(e2)}") from None
            if not isinstance(model, nn.Module):
                raise InvalidInputError(
                    f"{path} holds a {type(model).__name__}, not a module") from None
            return model, "pickle"
        if isinstance(state, nn.Module):
            return state, "pickle"
        if isinstance(state, dict) and "state_dict" in state and isinstance(
                state["state_dict"], dict):
            state = state["state_dict"]  # a training checkpoint
        if not isinstance(state, dict):
            raise InvalidInputError(f"{path} holds a {type(state).__name__}, not a state_dict")
    if arch is None:
        raise InvalidInputError(f"{path} holds weights only: give --arch module:callable to "
                                f"build the architecture")
    model = build_arch(arch)
    model = _in_dtype_of(model, state)
    state = _with_tied_aliases(model, state)
    state = _set_non_persistent(model, state)
    try:
        masked = _reapply_masks(model, state)
        model.load_state_dict(state)
        _refresh_masked(masked)
    except (RuntimeError, AttributeError, KeyError) as e:
        raise InvalidInputError(f"{path} does not fit --arch {arch}: {e}") from None
    return model, fmt


def _refused_by_weights_only(e: Exception) -> bool:
    """Whether torch.load(weights_only=True) failed because the file pickles more than
    tensors (a module, a class), rather than because the file is damaged."""
    return "Unsupported global" in str(e) or "can still be loaded" in str(e)


def _in_dtype_of(model: nn.Module, state: dict) -> nn.Module:
    """The architecture in the dtype of the file's weights when they all share one (a float16
    or bfloat16 file loaded into float32 parameters was pruned and saved as float32)."""
    dtypes = {v.dtype for v in state.values()
              if isinstance(v, torch.Tensor) and v.is_floating_point()}
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) == 1 and params and params != dtypes:
        model = model.to(dtypes.pop())
    return model


def _with_tied_aliases(model: nn.Module, state: dict) -> dict:
    """``state`` with the keys of tied parameters filled in from their partners: a file saved
    by safetensors' ``save_model`` keeps one name per shared tensor, and a strict load then
    missed the others."""
    own = model.state_dict()
    by_ptr: dict[int, list[str]] = {}
    for k, v in own.items():
        if v.numel():
            by_ptr.setdefault(v.data_ptr(), []).append(k)
    extra = {}
    for keys in by_ptr.values():
        have = [k for k in keys if k in state]
        held = [state[k] for k in have if isinstance(state[k], torch.Tensor)]
        if any(t.shape != held[0].shape or not torch.equal(t, held[0]) for t in held[1:]):
            # one tensor in the architecture: a load would keep whichever key came last
            raise InvalidInputError(f"the file's tied weights {have} differ, but the "
                                    f"architecture shares one tensor between them")
        if have and len(have) < len(keys):
            extra.update({k: state[have[0]] for k in keys if k not in state})
    return {**state, **extra} if extra else state


def _set_non_persistent(model: nn.Module, state: dict) -> dict:
    """A TorchScript file's state_dict holds the non-persistent buffers too, which the eager
    architecture's state_dict leaves out (a strict load refused them): their values go into
    the buffers (the scripted value, not the architecture's default), the rest loads as
    usual."""
    rest = dict(state)
    for owner, mod in model.named_modules():
        for name in getattr(mod, "_non_persistent_buffers_set", ()):
            key = f"{owner}.{name}" if owner else name
            buf = mod._buffers.get(name)
            if key in rest and isinstance(buf, torch.Tensor):
                value = rest.pop(key)
                if value.shape == buf.shape:
                    with torch.no_grad():
                        buf.copy_(value)
                else:
                    mod._buffers[name] = value.clone()
    return rest


def _reapply_masks(model: nn.Module, state: dict) -> list[nn.Module]:
    """A state_dict saved in torch.nn.utils.prune's convention (``weight_orig`` and
    ``weight_mask``, as ``prune --mask-convention`` writes it) loads into the plain
    architecture once the same masks are set up on it; returns the masked modules."""
    from torch.nn.utils import prune

    masked = []
    for key in state:
        if not key.endswith("_mask"):
            continue
        owner, _, name = key[: -len("_mask")].rpartition(".")
        if f"{key[: -len('_mask')]}_orig" not in state:
            continue
        module = model.get_submodule(owner)
        if not hasattr(module, f"{name}_orig"):
            prune.custom_from_mask(module, name, state[key].to(torch.bool))
            masked.append(module)
    return masked


def _refresh_masked(modules: list[nn.Module]) -> None:
    """The masked weight is an attribute computed by prune's forward pre-hook: recompute it
    from the loaded ``*_orig`` and ``*_mask`` now, not at the first forward pass."""
    from torch.nn.utils import prune

    for module in modules:
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                setattr(module, hook._tensor_name, hook.apply_mask(module))


def has_masks(model: nn.Module) -> list[str]:
    """The modules that carry torch.nn.utils.prune masks (a computed ``weight``)."""
    return [n for n, m in model.named_modules() if hasattr(m, "weight_orig")]


def bake_masks(model: nn.Module) -> list[str]:
    """Make every pruned weight a plain parameter again (``prune.remove``), zeros kept;
    returns the modules that had masks."""
    from torch.nn.utils import prune

    names = has_masks(model)
    for n in names:
        prune.remove(model.get_submodule(n), "weight")
    return names


def save_model(model: nn.Module, path, fmt: str, *, protect=(), source=None) -> Path:
    """Write ``model`` atomically as "state_dict", "safetensors", "pickle" or "torchscript";
    refuses to replace any path in ``protect``. TorchScript is the program of ``source`` (the
    TorchScript input, loaded again) with the model's weights put into it, so the scripted
    methods and the module's structure are the user's own."""
    path = check_not_input(path, protect)
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown model format {fmt!r}; use one of {FORMATS}")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save

        data = save(_without_aliases(state))
    elif fmt == "torchscript":
        data = _scripted_with(state, source)
    else:
        buf = io.BytesIO()
        torch.save(model if fmt == "pickle" else state, buf)
        data = buf.getvalue()
    if not path.parent.is_dir():
        raise InvalidInputError(f"cannot write {path}: folder {path.parent} does not exist")
    return _write_atomically(path, "wb", lambda f: f.write(data))


def _without_aliases(state: dict) -> dict:
    """One name per shared tensor (tied weights), as safetensors' ``save_model`` keeps them:
    safetensors refuses tensors that share memory. ``load_model`` fills the others in."""
    seen: set[tuple] = set()
    out = {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.stride(), v.dtype) if v.numel() else None
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out[k] = v
    return out


def _scripted_with(state: dict, source) -> bytes:
    """The TorchScript file ``source`` with ``state`` loaded into it, as bytes."""
    if source is None or detect_format(Path(source)) != "torchscript":
        raise InvalidInputError("a TorchScript output copies the program of a TorchScript "
                                "input; this input is not one (choose --format state_dict)")
    scripted = torch.jit.load(str(source), map_location="cpu")
    mine = scripted.state_dict()
    # the scripted state may hold more (non-persistent buffers, which keep their values)
    if not set(state) <= set(mine) or any(mine[k].shape != v.shape for k, v in state.items()):
        raise InvalidInputError("the pruned weights do not fit the TorchScript input's "
                                "parameters (masks kept with --mask-convention, or a changed "
                                "architecture); choose --format state_dict")
    with torch.no_grad():
        for k, v in state.items():
            mine[k].copy_(v)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    return buf.getvalue()


def load_calibration(path, batch_size: int = 256) -> list[torch.Tensor]:
    """Calibration inputs from a .pt (a tensor, a dict with one of INPUT_KEYS, an (inputs,
    labels) pair, or a list of batches or pairs), an .npy (one array) or an .npz (one of
    INPUT_KEYS, else its only array), split into batches. Integer inputs (raw uint8 images)
    are refused: their scale is the user's to set; complex ones too."""
    import numpy as np

    from layertrim.validate import check_int

    check_int("the batch size", batch_size)
    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"cannot read {path}: "
                                f"{'a directory' if path.is_dir() else 'no such file'}")
    if path.suffix == ".npy":  # one array of inputs
        try:
            x = torch.from_numpy(np.load(path, allow_pickle=False))
        except Exception as e:  # an object array, a truncated file
            raise InvalidInputError(f"cannot read {path} as an .npy: {_first_line(e)}") from None
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                keys = list(f.keys())
                key = next((k for k in INPUT_KEYS if k in keys), None)
                if key is None and len(keys) != 1:
                    raise InvalidInputError(f"{path}: expected an array named one of "
                                            f"{INPUT_KEYS}, found {keys}")
                x = torch.from_numpy(f[key or keys[0]])
        except InvalidInputError:
            raise
        except Exception as e:  # a truncated zip, a text file, an object array
            raise InvalidInputError(f"cannot read {path} as an .npz: {_first_line(e)}") from None
    else:
        try:
            with open(path, "rb") as f:  # a file object: torch reads no meaning into the name
                obj = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:
            raise InvalidInputError(f"cannot read {path} as a .pt of tensors: "
                                    f"{_first_line(e)}") from None
        x = _calibration_inputs(obj)
        if x is None:
            raise InvalidInputError(
                f"{path}: expected a tensor of inputs, a dict with one of {INPUT_KEYS}, an "
                f"(inputs, labels) pair, or a list of input batches or (inputs, labels) pairs; "
                f"found a {type(obj).__name__}")
    if x.dim() < 1 or len(x) == 0:
        raise InvalidInputError(f"{path}: the calibration set is empty")
    if x.is_complex():
        raise InvalidInputError(f"{path}: the calibration inputs are {x.dtype}; the prunable "
                                f"layers take real inputs")
    if not x.is_floating_point():
        raise InvalidInputError(
            f"{path}: the calibration inputs are {x.dtype}; convert them to floats scaled as "
            f"the model was trained on (e.g. images / 255) and save them again")
    return list(torch.split(x, batch_size))



def _calibration_inputs(obj) -> torch.Tensor | None:
    """The input tensor of a loaded calibration object: a tensor; a dict's INPUT_KEYS entry;
    the first of an (inputs, labels) pair; a list of input batches or of such pairs
    (concatenated)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return next((obj[k] for k in INPUT_KEYS
                     if isinstance(obj.get(k), torch.Tensor)), None)
    if isinstance(obj, (tuple, list)) and obj:
        if labelled_pair(obj) and isinstance(obj[0], torch.Tensor):  # (a dict: not a file's)
            return obj[0]  # (inputs, labels)
        parts = [o[0] if isinstance(o, (tuple, list)) and o else o for o in obj]
        if all(isinstance(p, torch.Tensor) and p.dim() >= 1 for p in parts) and len(
                {p.shape[1:] for p in parts}) == 1:
            return torch.cat(parts)
    return None
