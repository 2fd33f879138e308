"""Executors: a ``map`` over self-contained layer jobs. A job is a LayerProblem with a solver
name and options; it returns a LayerResult.

Every executor has two entry points:

- ``as_completed(fn, jobs)`` yields ``(index, outcome)`` pairs as jobs finish, in any order;
  the outcome is the job's result or the exception it raised (a failing job never stops the
  others). A worker that dies mid-job is retried ``retries`` times.
- ``map(fn, jobs)`` yields the results in job order and raises the first failure.

``serial`` runs in this process, ``local`` on worker processes, ``ray`` (in
``ray_executor.py``, imported only when asked for) on a Ray cluster.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.result import LayerResult
from layertrim.validate import check_int

EXECUTORS = ("serial", "local", "ray")
DEFAULT_RETRIES = 2


@dataclass
class LayerJob:
    """One layer (or one group of a grouped convolution) to prune."""

    name: str
    group: int
    problem: LayerProblem
    method: str
    options: dict = field(default_factory=dict)
    module: str | None = None  # where a custom solver registers itself; imported by workers

    @property
    def key(self) -> str:
        return job_key(self.name, self.group)


def job_key(name: str, group: int) -> str:
    """A job's name in checkpoints and logs: ``name``, or ``name[gK]`` for group K > 0."""
    return name if group == 0 else f"{name}[g{group}]"


class WorkerDiedError(RuntimeError):
    """A job's worker process died (killed, out of memory, crashed) more often than allowed."""


def solve_job(job: LayerJob) -> LayerResult:
    """Solve one job; in a worker process, first import the module that registers its solver
    (a solver registered by the user's own code exists there only once that code runs)."""
    import importlib

    from layertrim.solvers import run

    if job.module and job.module != "__main__":
        importlib.import_module(job.module)
    return run(job.problem, job.method, **job.options)


def solver_module(method: str) -> str | None:
    """The module a solver is defined in, for workers to import (None for built-ins)."""
    from layertrim.solvers import get_solver

    mod = getattr(get_solver(method).fn, "__module__", None)
    return None if mod is None or mod.startswith("layertrim.") else mod


class Executor:
    """The base: ``map`` (ordered, raising) on top of ``as_completed``; a context manager
    whose ``close`` releases workers."""

    retries: int = DEFAULT_RETRIES

    def as_completed(self, fn: Callable, jobs: Sequence) -> Iterator[tuple[int, object]]:
        raise NotImplementedError

    def map(self, fn: Callable, jobs: Sequence) -> Iterable:
        jobs = list(jobs)
        done: dict[int, object] = {}
        nxt = 0
        for i, outcome in self.as_completed(fn, jobs):
            done[i] = outcome
            while nxt in done:
                out = done.pop(nxt)
                if isinstance(out, BaseException):
                    raise out
                yield out
                nxt += 1

    def connect(self) -> None:
        """Acquire what the executor needs before the first job (a no-op here)."""

    def close(self) -> None:
        """Release workers and connections (a no-op here)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SerialExecutor(Executor):
    """Jobs one after the other, in this process."""

    def as_completed(self, fn: Callable, jobs: Sequence) -> Iterator[tuple[int, object]]:
        for i, job in enumerate(jobs):
            try:
                yield i, fn(job)
            except Exception as e:  # noqa: BLE001 -- reported per job; Ctrl-C still stops
                yield i, e


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset, cgroups), else all."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _worker_init(blas_threads: int) -> None:
    """In each worker: leave Ctrl-C to the parent, cap BLAS and Numba threads (workers x
    threads <= cores: oversubscription costs more than it gains)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from threadpoolctl import threadpool_limits

    import layertrim.solvers  # noqa: F401 -- load numpy's BLAS before capping it

    global _LIMITS
    _LIMITS = threadpool_limits(limits=blas_threads)  # kept for the worker's lifetime
    try:
        import numba

        numba.set_num_threads(min(blas_threads, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


_LIMITS = None


class LocalExecutor(Executor):
    """Jobs on local worker processes (spawned: forking a process that holds BLAS, Numba or
    torch thread pools can deadlock).

    Parameters
    ----------
    workers : worker processes; defaults to the cores this process may use.
    retries : how many times a job is resubmitted when its worker dies (the pool breaks).
        Every job unfinished at the break counts one attempt: the pool cannot say whose
        worker died.
    blas_threads : BLAS/Numba threads per worker; defaults to cores // workers (at least 1).
    """

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def __init__(self, workers: int | None = None, *, retries: int = DEFAULT_RETRIES,
                 blas_threads: int | None = None) -> None:
        check_int("workers", workers, allow_none=True)
        check_int("retries", retries, 0)
        check_int("blas_threads", blas_threads, allow_none=True)
        cores = usable_cores()
        self.workers = workers or cores
        self.retries = retries
        self.blas_threads = blas_threads or max(1, cores // self.workers)
        self._pool: ProcessPoolExecutor | None = None
        self._inflight: dict[Future, int] = {}  # the jobs of the current map, while running

    def _get_pool(self) -> ProcessPoolExecutor:
        """The executor's pool, kept between maps (workers start once) until ``close``."""
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_init, initargs=(self.blas_threads,))
        return self._pool

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if any(not f.done() for f in self._inflight):
            # jobs abandoned by a consumer that stopped outside the wait (Ctrl-C while it
            # saved a finished layer): waiting for them could take as long as a solve
            _kill(pool)
        else:
            pool.shutdown(wait=True, cancel_futures=True)
        self._inflight = {}

    def as_completed(self, fn: Callable, jobs: Sequence) -> Iterator[tuple[int, object]]:
        jobs = list(jobs)
        if len(jobs) <= 1 or self.workers == 1:
            yield from SerialExecutor().as_completed(fn, jobs)
            return
        attempts = [0] * len(jobs)
        todo = list(range(len(jobs)))
        started = False  # whether any worker ever returned: a pool that never did, in an
        while todo:  # unguarded script, is the spawn bootstrap failing (see _unguarded_main)
            pool = self._get_pool()
            broken = False
            try:
                running: dict[Future, int] = {pool.submit(fn, jobs[i]): i for i in todo}
                self._inflight = running
                todo = []
                while running:
                    finished, _ = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        i = running.pop(f)
                        try:
                            out = f.result()
                            started = True
                            yield i, out
                        except BrokenProcessPool:
                            script = None if started else _unguarded_main()
                            if script is not None:
                                raise InvalidInputError(
                                    f"the local executor's worker processes could not start: "
                                    f"they are spawned and import {script}, which runs the "
                                    f"prune again at import; put the call under "
                                    f"`if __name__ == \"__main__\":`, or use "
                                    f"executor=\"serial\"") from None
                            broken = True
                            attempts[i] += 1
                            if attempts[i] > self.retries:
                                yield i, WorkerDiedError(
                                    f"its worker process died {attempts[i]} times (retries="
                                    f"{self.retries})")
                            else:
                                todo.append(i)
                        except Exception as e:  # noqa: BLE001 -- the job's own error
                            started = True
                            yield i, e
            except BaseException:  # Ctrl-C, or the consumer stopped early: stop the workers
                self._pool = None
                _kill(pool)
                raise
            if broken:  # a worker died: a new pool for the jobs this one lost
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
                todo.sort()


def _unguarded_main() -> str | None:
    """The main script's path when spawned workers re-run it and it has no
    ``if __name__ == "__main__":`` block (its top level, the prune included, then runs in every
    worker). A module run with ``python -m pkg`` (``pkg.__main__``) is not re-run, as
    multiprocessing skips those; None whenever unsure, so worker deaths are retried."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name.split(".")[-1] == "__main__":
        return None
    path = getattr(main, "__file__", None)
    if not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:  # `if __name__ == "__main__":` (either order) at the top level
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [node.test.left, *node.test.comparators]
            if {getattr(n, "id", None) for n in names} & {"__name__"} and \
                    {getattr(n, "value", None) for n in names} & {"__main__"}:
                return None
    return path


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers now (by their pids), abandoning their jobs."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


def get_executor(executor, *, workers: int | None = None, address: str | None = None,
                 retries: int = DEFAULT_RETRIES) -> Executor:
    """None or "local" -> LocalExecutor; "serial" -> SerialExecutor; "ray" -> RayExecutor
    (needs the ``ray`` extra). Objects with a ``map`` method pass through."""
    if executor is None or executor == "local":
        if address is not None:
            raise InvalidInputError("an address is for the ray executor; use executor='ray'")
        return LocalExecutor(workers, retries=retries)
    if executor == "serial":
        return SerialExecutor()
    if executor == "ray":
        from layertrim.layerwise.ray_executor import RayExecutor

        return RayExecutor(address, workers=workers, retries=retries)
    if hasattr(executor, "map") and not isinstance(executor, str):
        return executor
    raise InvalidInputError(f"unknown executor {executor!r}; use one of {EXECUTORS} or an "
                            f"executor object")


def outcomes(executor, fn: Callable, jobs: Sequence) -> Iterator[tuple[int, object]]:
    """``(index, result or exception)`` as jobs finish, from any executor: one with only an
    ordered ``map`` gives its results in order and stops at its first failure."""
    if hasattr(executor, "as_completed"):
        yield from executor.as_completed(fn, jobs)
        return
    it = iter(executor.map(fn, jobs))
    for i in range(len(jobs)):
        try:
            yield i, next(it)
        except Exception as e:  # noqa: BLE001
            yield i, e
            return
