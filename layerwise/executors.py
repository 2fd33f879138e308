"""Executors: a ``map`` over self-contained layer jobs. A job is a LayerProblem with a solver
name and options; it returns a LayerResult. Results come back in job order."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult


@dataclass
class LayerJob:
    """One layer (or one group of a grouped convolution) to prune."""

    name: str
    group: int
    problem: LayerProblem
    method: str
    options: dict = field(default_factory=dict)


def solve_job(job: LayerJob) -> LayerResult:
    from layertrim.solvers import run

    return run(job.problem, job.method, **job.options)


class SerialExecutor:
    """Jobs one after the other, in this process."""

    def map(self, fn: Callable, jobs: Sequence) -> Iterable:
        for job in jobs:
            yield fn(job)


class LocalExecutor:
    """Jobs on local worker processes (spawned: forking a process that holds BLAS, Numba or
    torch thread pools can deadlock). ``workers`` defaults to the machine's cores."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 1):
            raise InvalidInputError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers or os.cpu_count() or 1

    def map(self, fn: Callable, jobs: Sequence) -> Iterable:
        if len(jobs) <= 1 or self.workers == 1:
            yield from SerialExecutor().map(fn, jobs)
            return
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(self.workers, len(jobs)), mp_context=ctx) as ex:
            yield from ex.map(fn, jobs)


def get_executor(executor) -> SerialExecutor | LocalExecutor:
    """None or "local" -> LocalExecutor(); "serial" -> SerialExecutor(); objects with a
    ``map`` method pass through."""
    if executor is None or executor == "local":
        return LocalExecutor()
    if executor == "serial":
        return SerialExecutor()
    if hasattr(executor, "map") and not isinstance(executor, str):
        return executor
    raise InvalidInputError(f"unknown executor {executor!r}; use 'serial', 'local' or an "
                            f"executor object")
