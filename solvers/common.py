"""Turning a solver's raw output into a LayerResult with its error measured from H."""

from __future__ import annotations

import time

import numpy as np

from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.validate import check_int, check_real


def finalize(
    problem: LayerProblem,
    Wa: np.ndarray,
    mask: np.ndarray,
    *,
    solver: str,
    settings: dict,
    t0: float,
    iterations: int,
    status: str = "solved",
    history: list | None = None,
    certificate: dict | None = None,
) -> LayerResult:
    """Zero the pruned weights exactly, split off the bias and measure the error.

    ``Wa`` is the augmented m x (d+1) matrix [W, b] when the problem has a bias, else m x d.
    ``t0`` is the ``time.perf_counter()`` value at the solver's start.
    """
    d = problem.d
    mask = np.asarray(mask, dtype=bool)
    Wa = np.array(Wa, dtype=np.float64, copy=True)
    Wa[:, :d] = np.where(mask, Wa[:, :d], 0.0)
    wall = time.perf_counter() - t0
    obj = problem.objective(Wa)
    rel = problem.rel_error(obj)
    nnz = int(mask.sum())
    return LayerResult(
        W=Wa[:, :d],
        mask=mask,
        bias=Wa[:, d].copy() if problem.bias is not None else None,
        objective=obj,
        rel_error=rel,
        sparsity=1.0 - nnz / mask.size,
        nnz=nnz,
        iterations=iterations,
        wall_time=wall,
        solver=solver,
        settings=dict(settings),
        status=status,
        pattern=str(problem.pattern),
        history=list(history or []),
        certificate=dict(certificate or {}),
    )


def check_damp(damp) -> None:
    """A dampening factor (relative to mean(diag H)) must be a finite number >= 0."""
    check_nonnegative("damp", damp)


def check_positive(name: str, value, *, integer: bool = False, allow_none: bool = False) -> None:
    """A solver option that must be a finite number (or integer) > 0, or None if allowed."""
    if integer:
        check_int(name, value, allow_none=allow_none)
        return
    check_real(name, value, allow_none=allow_none)


def check_nonnegative(name: str, value) -> None:
    """A solver option that must be a finite number >= 0 (NaN and Inf refused)."""
    check_real(name, value, strict=False)
