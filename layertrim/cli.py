"""The ``layertrim`` command line: ``solve`` one layer, list ``methods``."""

from __future__ import annotations

import argparse
import ast
import sys
from typing import Any

import numpy as np

from layertrim.adapters.npz import load_layer
from layertrim.api import methods, solve_layer
from layertrim.atomic import atomic_savez
from layertrim.errors import InvalidInputError
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
    return p


def _solve(args) -> int:
    data = load_layer(args.layer)
    gram = None
    if data["H"] is not None:
        gram = data["H"]
    options = _parse_options(args.option)
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
        return _solve(args)
    except InvalidInputError as e:
        print(f"layertrim: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:  # e.g. an unwritable output; numerical trouble
        print(f"layertrim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
