"""The ``layertrim`` command line: ``solve`` one layer, ``prune`` a whole PyTorch model,
``inspect`` its prunable layers, list ``methods``."""

from __future__ import annotations

import argparse
import ast
import contextlib
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from layertrim.adapters.npz import load_layer
from layertrim.api import methods, solve_layer
from layertrim.atomic import atomic_savez, check_outputs
from layertrim.compare import DEFAULT_METHODS
from layertrim.errors import InvalidInputError
from layertrim.layerwise.executors import get_executor
from layertrim.layerwise.runner import LayerJobsFailed, progress_bar
from layertrim.pattern import Pattern
from layertrim.report import format_result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="layertrim", description="Layer-wise pruning of trained networks, no retraining."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("solve", help="prune one layer stored as .npz (keys W, X or H, optional b)")
    s.add_argument("layer", help="input .npz with W (m x d), X (n x d) or H (d x d), optional b")
    s.add_argument("--method", default="sparsegpt", help="solver name (see `layertrim methods`)")
    target = s.add_mutually_exclusive_group()
    target.add_argument("--sparsity", type=float, help="fraction of weights to remove, in [0, 1)")
    target.add_argument("--nnz", type=int, help="number of weights to keep")
    s.add_argument("--pattern", default="layer", help="layer | row | N:M (e.g. 2:4)")
    s.add_argument(
        "--refit", action=argparse.BooleanOptionalAction, default=None,
        help="exact least-squares refit on the mask (the l0 solvers refit unless --no-refit)",
    )
    s.add_argument("--activation", default="linear",
                   help="the layer's activation (relu, tanh, ...; used by l0-general, "
                        "l0-cutting-plane)")
    s.add_argument("--seed", type=int, default=None, help="seed for the random solver")
    s.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="solver setting, repeatable (e.g. --option time_budget=2.5)")
    s.add_argument("--out", help="output .npz (W, mask, b); written atomically")

    sub.add_parser("methods", help="list the solvers")

    pr = sub.add_parser("prune", help="prune a whole PyTorch model (state_dict, safetensors, "
                                      "TorchScript weights or a trusted pickle)")
    pr.add_argument("model", help="model file (.pt/.pth state_dict, .safetensors, TorchScript, "
                                  "or a pickled module with --trust-pickle)")
    pr.add_argument("--arch", help="module:callable that builds the architecture")
    pr.add_argument("--trust-pickle", action="store_true",
                    help="allow loading a pickled module (unpickling runs code)")
    pr.add_argument("--calib", required=True, help="calibration inputs: .pt tensor or .npz 'x'")
    pr.add_argument("--batch-size", type=int, default=256)
    amount = pr.add_mutually_exclusive_group()
    amount.add_argument("--sparsity", type=float,
                        help="fraction of all prunable weights to remove, split across layers "
                             "by --allocation")
    amount.add_argument("--layer-sparsity", action="append", metavar="NAME=S",
                        help="one layer's sparsity, repeatable; the layers named are the ones "
                             "pruned (names as `layertrim inspect` lists them)")
    pr.add_argument("--allocation", choices=["global", "owl", "uniform"],
                    help="how --sparsity is split: global (error curves under one budget, "
                         "default), owl (outlier-weighted) or uniform (the same in every layer)")
    pr.add_argument("--method", default="l0-admm",
                    help="solver name: Gram-based, or nettrim / nettrim-cvx on sampled inputs")
    pr.add_argument("--schedule", default="cascade", choices=["cascade", "parallel"])
    pr.add_argument("--pattern", default="layer", help="layer | row | N:M")
    pr.add_argument("--layers", action="append", help="name or regex of layers to prune")
    pr.add_argument("--exclude", action="append", help="name or regex of layers to skip")
    pr.add_argument("--executor", default="local", choices=["local", "serial", "ray"],
                    help="where the layer jobs run: local processes (default), this process, "
                         "or a Ray cluster")
    pr.add_argument("--address", help="ray: 'auto' or host:port of a running cluster "
                                      "(default: start a local Ray instance)")
    pr.add_argument("--workers", type=int, help="local: worker processes (default: the cores); "
                                                "ray: most jobs in flight")
    pr.add_argument("--retries", type=int, default=2,
                    help="retries of a job whose worker dies (default 2)")
    pr.add_argument("--checkpoint", help="save each finished layer here (default: OUT.ckpt, "
                                         "removed after a successful run)")
    pr.add_argument("--no-checkpoint", action="store_true", help="do not checkpoint")
    pr.add_argument("--resume", metavar="DIR",
                    help="continue the run checkpointed in DIR: finished layers are not solved "
                         "again")
    pr.add_argument("--gram-dtype", default="float32", choices=["float32", "float64"],
                    help="precision of each calibration batch's Gram products for a float32 "
                         "model on the CPU (sums over batches are float64; default float32)")
    pr.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="solver setting, repeatable")
    pr.add_argument("--out", required=True, help="output model file (written atomically)")
    pr.add_argument("--format", default="same", choices=["same", "state_dict", "safetensors",
                                                           "pickle", "torchscript"],
                    help="output format (default: the input's)")
    pr.add_argument("--mask-convention", action="store_true",
                    help="save in torch.nn.utils.prune's convention (weight_orig + "
                         "weight_mask), to fine-tune with the masks kept")
    pr.add_argument("--report", help="write the per-layer report as JSON")
    pr.add_argument("--plot", help="write a PNG of per-layer sparsity and error")

    be = sub.add_parser("bench", help="compare solvers on one layer .npz: error and time at "
                                      "each sparsity, against a baseline method")
    be.add_argument("layer", help="input .npz with W (m x d), X (n x d) or H (d x d), optional b")
    be.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="comma-separated solver names (default: %(default)s)")
    be.add_argument("--sparsity", default=None,
                    help="comma-separated fractions to remove (default: 0.5,0.7,0.9; with an "
                         "N:M pattern, the sparsity it fixes)")
    be.add_argument("--pattern", default="layer", help="layer | row | N:M")
    be.add_argument("--activation", default="linear", choices=["linear", "relu"],
                    help="relu adds the error after the activation (needs X)")
    be.add_argument("--baseline", help="method the ratios are taken against (default: the "
                                       "first)")
    be.add_argument("--repeats", type=int, default=1, help="runs per cell; the best time counts")
    be.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="solver setting, repeatable; each method gets those it takes")
    be.add_argument("--json", help="write the rows as JSON (atomically)")
    be.add_argument("--plot", help="write a PNG of error and time against sparsity")

    ins = sub.add_parser("inspect", help="list a model's prunable layers and their sizes")
    ins.add_argument("model")
    ins.add_argument("--arch", help="module:callable that builds the architecture")
    ins.add_argument("--trust-pickle", action="store_true")
    return p


def _arch_source(spec: str | None) -> tuple[str, ...]:
    """The source file of the --arch module (imported by now), which no output may replace."""
    if not spec or ":" not in spec:
        return ()
    mod = sys.modules.get(spec.split(":")[0])
    path = getattr(mod, "__file__", None)
    return (path,) if path else ()


def _prune(args) -> int:
    import torch

    from layertrim.adapters.torch import prune_model
    from layertrim.adapters.torch_io import (
        bake_masks,
        load_calibration,
        load_model,
        save_model,
    )
    from layertrim.atomic import atomic_write_text

    model, fmt = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    baked = bake_masks(model)  # a model saved with masks is pruned from its masked weights
    if baked:
        print(f"the input's pruning masks ({len(baked)} layers) are baked into its weights",
              file=sys.stderr)
    calib = load_calibration(args.calib, args.batch_size)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is not None:
        calib = [x.to(dtype) if torch.is_floating_point(x) else x for x in calib]
    out_fmt = fmt if args.format == "same" else args.format
    if out_fmt == "torchscript" and (fmt != "torchscript" or args.mask_convention):
        raise InvalidInputError(
            "a TorchScript output is the TorchScript input's program with the pruned weights "
            "in it: it needs a TorchScript input and plain weights (not --mask-convention); "
            "choose --format state_dict")
    protect = (args.model, args.calib, *_arch_source(args.arch))
    # refused before the work (and the input again when writing)
    check_outputs({"--out": args.out, "--report": args.report, "--plot": args.plot}, protect)
    options = _parse_options(args.option)
    sparsity: Any = args.sparsity
    if args.allocation is not None and args.sparsity is None:
        raise InvalidInputError("--allocation splits --sparsity across layers: give --sparsity "
                                "(--layer-sparsity and an N:M pattern set the layers' "
                                "sparsities themselves)")
    layers = args.layers
    if args.layer_sparsity:  # without --layers, prune_model prunes the named layers only
        sparsity = _layer_sparsities(args.layer_sparsity)
    reserved = sorted(set(options) & PRUNE_OWN_KEYS)
    if reserved:
        raise InvalidInputError(f"--option {reserved[0]}=... is set by prune's own flags, "
                                f"not by a solver option")
    checkpoint, default_ckpt = _checkpoint_dir(args)
    if checkpoint is not None:
        for flag, path in (("--out", args.out), ("--report", args.report),
                           ("--plot", args.plot)):
            if path is not None and Path(path).resolve() == Path(checkpoint).resolve():
                raise InvalidInputError(f"the checkpoint directory and {flag} name the same "
                                        f"path {path}")
    # removable on an early failure
    ours = checkpoint is not None and default_ckpt and not Path(checkpoint).exists()
    executor = get_executor(args.executor, workers=args.workers, address=args.address,
                            retries=args.retries)
    try:
        with executor:
            report = prune_model(model, calib, sparsity=sparsity, method=args.method,
                                 schedule=args.schedule, pattern=args.pattern,
                                 allocation=args.allocation or "global",
                                 layers=layers, exclude=args.exclude, executor=executor,
                                 checkpoint=None if args.resume else checkpoint,
                                 resume=args.resume, gram_dtype=args.gram_dtype,
                                 mask_convention=args.mask_convention,
                                 progress=progress_bar(f"{args.method} {args.schedule}",
                                                       lines=True),
                                 **options)
    except KeyboardInterrupt:
        _mark_default(checkpoint, ours)
        where = f"; the finished layers are in {checkpoint}, continue with --resume " \
                f"{checkpoint}" if checkpoint else ""
        print(f"layertrim: interrupted, no model written{where}", file=sys.stderr)
        return 130
    except LayerJobsFailed as e:
        _mark_default(checkpoint, ours)
        where = f"; the other layers are saved in {checkpoint}: fix the cause and continue " \
                f"with --resume {checkpoint}" if checkpoint else ""
        print(f"layertrim: error: {e}. No model written{where}", file=sys.stderr)
        return 1
    except InvalidInputError:
        if checkpoint is not None and ours:  # bad input: a resume of it would be refused
            # (other data or settings) and the next run would find it in the way
            shutil.rmtree(checkpoint, ignore_errors=True)
        raise
    print(report)
    print(f"wrote {save_model(model, args.out, out_fmt, protect=protect, source=args.model)}")
    if default_ckpt and checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # served its purpose
    if args.report:
        print(f"wrote {atomic_write_text(args.report, report.to_json())}")
    if args.plot:
        print(f"wrote {report.plot(args.plot)}")
    return 0


DEFAULT_MARK = "cli-default"  # in a checkpoint directory: `prune` made it as OUT.ckpt


def _mark_default(checkpoint: str | None, ours: bool) -> None:
    """A run stopped early leaves its default checkpoint for --resume; say it was the
    default, so the resume that finishes the job removes it (a named one is kept)."""
    if ours and checkpoint is not None and Path(checkpoint).is_dir():
        with contextlib.suppress(OSError):
            (Path(checkpoint) / DEFAULT_MARK).write_text("made by layertrim prune as the "
                                                        "default checkpoint\n")


def _checkpoint_dir(args) -> tuple[str | None, bool]:
    """(the checkpoint directory or None, whether it is the default one next to --out)."""
    if args.resume:
        if args.checkpoint and args.checkpoint != args.resume:
            raise InvalidInputError("--checkpoint and --resume name different directories: a "
                                    "resumed run checkpoints into the one it resumes")
        if args.no_checkpoint:
            raise InvalidInputError("--resume needs a checkpoint; drop --no-checkpoint")
        # a default checkpoint left by an interrupted run (it says so: DEFAULT_MARK) goes
        # after success, as it would have gone with the run that made it; a named one stays
        return args.resume, (Path(args.resume) / DEFAULT_MARK).is_file()
    if args.no_checkpoint:
        if args.checkpoint:
            raise InvalidInputError("--checkpoint and --no-checkpoint contradict each other")
        return None, False
    if args.checkpoint:
        return args.checkpoint, False
    return f"{args.out}.ckpt", True


def _bench(args) -> int:
    import json

    from layertrim.atomic import atomic_write_text
    from layertrim.compare import compare_methods, format_rows, plot_rows, rows_to_dicts

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    levels = args.sparsity
    if levels is None:
        nm = Pattern.parse(args.pattern)
        levels = f"{1 - nm.n / nm.m:g}" if nm.kind == "nm" else "0.5,0.7,0.9"
    sparsities = []
    for item in levels.split(","):
        try:
            sparsities.append(float(item))
        except ValueError:
            raise InvalidInputError(f"--sparsity: {item.strip()!r} is not a number") from None
    check_outputs({"--json": args.json, "--plot": args.plot}, (args.layer,))
    data = load_layer(args.layer)
    if args.activation == "relu" and data["X"] is None:
        raise InvalidInputError(f"--activation relu adds the error after the ReLU, which needs "
                                f"the inputs X; {args.layer} holds only a Gram H")
    baseline = args.baseline or (methods[0] if methods else "")

    def show(row):
        state = "failed" if row.error else f"{row.time_s:.2f} s"
        print(f"  {row.method} at {row.target:g}: {state}", file=sys.stderr, flush=True)

    rows = compare_methods(data["W"], data["X"], gram=data["H"], bias=data["b"],
                           methods=methods, sparsities=sparsities, pattern=args.pattern,
                           activation=args.activation, repeats=args.repeats,
                           baseline=baseline, options=_parse_options(args.option),
                           progress=show)
    m, d = data["W"].shape
    print(f"{args.layer}: {m} x {d}" + (" + bias" if data["b"] is not None else "")
          + (f", n = {data['X'].shape[0]}" if data["X"] is not None else ", Gram only"))
    print(format_rows(rows, baseline))
    if args.json:
        doc = {"layer": str(args.layer), "m": m, "d": d, "baseline": baseline,
               "pattern": args.pattern, "activation": args.activation,
               "repeats": args.repeats, "rows": rows_to_dicts(rows)}
        print(f"wrote {atomic_write_text(args.json, json.dumps(doc, indent=1))}")
    if args.plot:
        print(f"wrote {plot_rows(rows, args.plot)}")
    return 1 if any(r.error for r in rows) else 0


def _inspect(args) -> int:
    from layertrim.adapters.torch import find_layers
    from layertrim.adapters.torch_io import load_model

    model, fmt = load_model(args.model, arch=args.arch, trust_pickle=args.trust_pickle)
    layers = find_layers(model)
    print(f"{args.model} ({fmt}): {len(layers)} prunable layers")
    print(f"{'layer':<28} {'kind':<8} {'groups':>6} {'m x d (per group)':>18} {'weights':>10}")
    for la in layers:
        print(f"{la.name:<28} {la.kind:<8} {la.groups:>6} {f'{la.m} x {la.d}':>18} "
              f"{la.module.weight.numel():>10}")
    print(f"{'total':<28} {'':<8} {'':>6} {'':>18} "
          f"{sum(la.module.weight.numel() for la in layers):>10}")
    return 0


def _solve(args) -> int:
    check_outputs({"--out": args.out}, (args.layer,))
    data = load_layer(args.layer)
    gram = None
    if data["H"] is not None:
        gram = data["H"]
    options = _parse_options(args.option)
    reserved = sorted(set(options) & SOLVE_OWN_KEYS)
    if reserved:
        raise InvalidInputError(f"--option {reserved[0]}=... is set by solve's own flags "
                                f"(--{reserved[0].replace('_', '-')}), not by a solver option")
    if args.seed is not None:
        options["seed"] = args.seed
    result = solve_layer(
        data["W"], data["X"], gram=gram, bias=data["b"], sparsity=args.sparsity, nnz=args.nnz,
        method=args.method, pattern=args.pattern, refit=args.refit,
        activation=args.activation, **options,
    )
    print(format_result(result))
    if args.out:
        arrays: dict[str, Any] = {"W": _as_float(result.W, data["W"]), "mask": result.mask}
        if result.bias is not None:
            arrays["b"] = _as_float(result.bias, data["b"])
        arrays["rel_error"] = np.float64(result.rel_error)
        arrays["sparsity"] = np.float64(result.sparsity)
        path = atomic_savez(args.out, protect=(args.layer,), **arrays)
        print(f"wrote {path}")
    return 0


# prune_model's arguments that `layertrim prune` sets from its own flags; other prune_model
# keywords (seed, max_rows, max_samples, frontier, ...) may come as --option
SOLVE_OWN_KEYS = {"W", "X", "gram", "bias", "sparsity", "nnz", "method", "pattern", "refit",
                  "activation"}
PRUNE_OWN_KEYS = {"model", "calib", "sparsity", "method", "schedule", "pattern", "layers",
                  "exclude", "executor", "checkpoint", "resume", "gram_dtype", "progress",
                  "allocation", "mask_convention"}


def _layer_sparsities(items: list[str]) -> dict[str, float]:
    """--layer-sparsity NAME=S pairs -> {name: sparsity}; a name given twice is refused."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, raw = item.rpartition("=")
        if not sep or not name:
            raise InvalidInputError(f"--layer-sparsity needs NAME=S, got {item!r}")
        try:
            value = float(raw)
        except ValueError:
            raise InvalidInputError(f"--layer-sparsity {item!r}: {raw!r} is not a number") \
                from None
        if name in out:
            raise InvalidInputError(f"--layer-sparsity names layer {name!r} twice")
        out[name] = value
    return out


def _parse_options(items: list[str]) -> dict[str, Any]:
    """KEY=VALUE pairs; values are Python literals (numbers, True, None) or else strings."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise InvalidInputError(f"--option needs KEY=VALUE, got {item!r}")
        try:
            value = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            value = raw.strip()
        options[key.strip()] = value
    return options


def _as_float(values: np.ndarray, like) -> np.ndarray:
    """Keep the input's float precision; integer inputs get float64 (solved weights are real)."""
    if like is not None and np.issubdtype(like.dtype, np.floating):
        return values.astype(like.dtype)
    return values


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "methods":
            items = methods()
            width = max(len(k) for k in items)
            for name, desc in items.items():
                print(f"{name.ljust(width)}  {desc}")
            return 0
        if args.command == "prune":
            return _prune(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "bench":
            return _bench(args)
        return _solve(args)
    except InvalidInputError as e:
        print(f"layertrim: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # e.g. an unwritable output; numerical trouble
        print(f"layertrim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
