"""Solvers registered by name; every one is ``solve(problem, **options) -> LayerResult``."""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from threadpoolctl import ThreadpoolController

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult

SolverFn = Callable[..., LayerResult]


@dataclass(frozen=True)
class SolverEntry:
    name: str
    fn: SolverFn
    description: str
    needs_target: bool = True  # False: the solver picks the sparsity itself (Net-Trim's eps)
    per_sample: bool = False  # True: iterates on the n x d inputs, not only on the Gram
    whole_model: bool = True  # False: single layers only (solve_layer), never prune_model


_REGISTRY: dict[str, SolverEntry] = {}


def register(
    name: str, description: str, *, needs_target: bool = True, per_sample: bool = False,
    whole_model: bool = True,
) -> Callable[[SolverFn], SolverFn]:
    """Decorator: register ``fn`` under ``name`` with a one-line description.

    ``needs_target=False`` marks solvers that run without a sparsity or nnz target;
    ``whole_model=False`` those that only single-layer calls can feed (their own inputs and
    settings per layer), which whole-model pruning refuses up front.
    """

    def wrap(fn: SolverFn) -> SolverFn:
        if name in _REGISTRY:
            raise RuntimeError(f"solver {name!r} registered twice")
        _REGISTRY[name] = SolverEntry(name, fn, description, needs_target, per_sample,
                                      whole_model)
        return fn

    return wrap


def get_solver(name: str) -> SolverEntry:
    if not isinstance(name, str):
        raise InvalidInputError(f"method must be a solver name (a string), got {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidInputError(f"unknown method {name!r}; known methods: {known}") from None


def available() -> dict[str, str]:
    """Registered solver names mapped to their one-line descriptions, sorted by name."""
    return {k: _REGISTRY[k].description for k in sorted(_REGISTRY)}


def run(
    problem: LayerProblem, method: str, *, refit: bool | None = None, **options
) -> LayerResult:
    """Run solver ``method`` on ``problem``.

    ``refit``: solvers that refit by themselves (they take a ``refit`` option, on by default)
    get it passed through; for the others ``refit=True`` follows them by the exact refit.
    """
    entry = get_solver(method)
    if entry.needs_target and not problem.has_target:
        raise InvalidInputError(
            f"missing sparsity target: method {method!r} needs sparsity (fraction) or nnz (count)"
        )
    if not entry.needs_target and takes_option(entry, "target_sparsity") and \
            _target_as_option(problem, method, options):
        return _dense(problem, method)
    if refit is not None and takes_option(entry, "refit"):
        options["refit"] = refit
        refit = None
    _check_options(entry, options)
    with _blas_threads(problem, entry.per_sample):
        result = entry.fn(problem, **options)
    if not refit:
        return result
    from layertrim.solvers.refit import refit as refit_fn

    refitted = refit_fn(problem, result.mask)
    refitted.solver = f"{result.solver}+refit"
    refitted.wall_time += result.wall_time
    refitted.iterations += result.iterations
    refitted.settings = {**result.settings, "refit": refitted.settings}
    return refitted


def _target_as_option(problem: LayerProblem, method: str, options: dict) -> bool:
    """Net-Trim's l1 program sets the sparsity through its radius: a sparsity (or nnz) given
    with the problem becomes its ``target_sparsity`` search (reached within 1%), never
    silently ignored; a structured pattern, which the program cannot keep, is refused.
    Returns True for a sparsity of 0: the layer is left as it is. (The Gram methods, in the
    cascade, refit such a layer to its target instead: it compensates the layers pruned
    before it; in the parallel schedule the target is W itself and nothing moves.)"""
    if problem.pattern.kind != "layer":
        raise InvalidInputError(
            f"method {method!r} prunes without structure (its l1 program picks the support); "
            f"pattern {problem.pattern} needs another method")
    if not problem.has_target:
        return False
    for key in ("target_sparsity", "eps"):
        if options.get(key) is not None:
            raise InvalidInputError(f"give sparsity (or nnz) or {key}, not both")
    if problem.sparsity == 0:
        return True
    options["target_sparsity"] = problem.sparsity
    return False


def _dense(problem: LayerProblem, method: str) -> LayerResult:
    """The layer as it is: what a sparsity of 0 asks for."""
    from layertrim.solvers.common import finalize

    return finalize(problem, problem.W0a, np.ones(problem.W0.shape, dtype=bool), solver=method,
                    settings={"target_sparsity": 0.0}, t0=time.perf_counter(), iterations=0)


# Below this many flops per m x d x d product, waking BLAS threads costs more than it saves
# (measured: a 100 x 300 layer runs l0-admm in 23 ms on one thread, 92 ms on two).
_SMALL_PRODUCT_FLOPS = 3e7
# A per-sample solver (Net-Trim's ADMM) alternates products with serial kernels and checks:
# a 2000 x 301 by 301 x 100 layer ran 1.0 s on one thread and 0.7 s on two.
_SMALL_SAMPLE_FLOPS = 2e7


def _blas_threads(problem: LayerProblem, per_sample: bool = False):
    """One BLAS thread for small layers, the library default otherwise. A per-sample solver's
    product is n x d by d x m, not m x d by d x d."""
    p = problem.H.shape[0]
    small = problem.m * p * p < _SMALL_PRODUCT_FLOPS
    if per_sample and problem.X is not None:
        small = problem.m * p * problem.X.shape[0] < _SMALL_SAMPLE_FLOPS
    if small:
        return _controller().limit(limits=1, user_api="blas")
    return contextlib.nullcontext()


@functools.cache
def _controller() -> ThreadpoolController:
    """The BLAS libraries loaded when first asked (numpy's and scipy's, which the solvers
    use), found once: ``threadpool_limits`` scans every loaded library at each call, 2-4 ms,
    which was most of a small layer's solve (LeNet-5's allocation curves: 120 of them)."""
    return ThreadpoolController()


def takes_option(entry: SolverEntry, name: str) -> bool:
    """Whether the solver takes ``name`` as a keyword-only option."""
    p = inspect.signature(entry.fn).parameters.get(name)
    return p is not None and p.kind is inspect.Parameter.KEYWORD_ONLY


def _check_options(entry: SolverEntry, options: dict) -> None:
    params = inspect.signature(entry.fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"solver {entry.name!r} has no option(s) {unknown}; its options are {allowed}"
        )
