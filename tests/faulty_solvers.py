"""Test-only solvers, registered on import (the executors' workers import this module by
name: a custom solver's module travels with each job). Each wraps sparsegpt, so its results
are sparsegpt's bits; without their options they are plain sparsegpt (other tests loop over
every registered method).

- ``test-die-once``: the first job to run SIGKILLs its own worker (a marker file says it has
  happened); the retry, and every later job, solves.
- ``test-raise-once``: the job of the layer with ``m`` outputs raises until a marker file
  exists (the marker is created on the first raise): a transient solver failure.
- ``test-slow``: sleeps ``delay`` seconds first, and under a gate (``_gate``) lets only a
  given number of jobs finish, so a run can be interrupted mid-way.

Also ``mlp()``: the architecture the CLI tests build with ``--arch tests.faulty_solvers:mlp``
(which, importing this module, registers the solvers in the CLI process too).
"""

import os
import signal
import time
from pathlib import Path

from layertrim.solvers import get_solver
from layertrim.solvers.registry import register


def _sparsegpt(problem):
    return get_solver("sparsegpt").fn(problem)


def _once(marker: str) -> bool:
    """True the first time for this marker, across processes (O_EXCL creation)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


@register("test-die-once", "test only: kills its own worker once, then sparsegpt")
def die_once(problem, *, marker: str | None = None):
    if marker is not None and _once(marker):  # no marker (a test looping over methods): safe
        os.kill(os.getpid(), signal.SIGKILL)
    return _sparsegpt(problem)


@register("test-raise-once", "test only: the layer with m outputs raises once, then sparsegpt")
def raise_once(problem, *, marker: str | None = None, m: int = -1):
    if marker is not None and problem.m == m and _once(marker):
        raise ArithmeticError(f"injected failure on a {problem.m} x {problem.d} layer")
    return _sparsegpt(problem)


@register("test-slow", "test only: sleeps, then sparsegpt")
def slow(problem, *, delay: float = 0.0):
    time.sleep(delay)
    _gate()
    return _sparsegpt(problem)


def _gate() -> None:
    """With LAYERTRIM_TEST_GATE=DIR and LAYERTRIM_TEST_PASSES=N in the environment, N jobs in
    all (counted by token files in DIR, across worker processes and runs) go on and every
    other one waits, until its process is stopped or for at most GATE_MAX_S (so a run that
    is not stopped still ends): a run can then be interrupted after a known number of layers,
    however slowly a busy machine runs the test."""
    gate = os.environ.get("LAYERTRIM_TEST_GATE")
    if not gate:
        return
    for i in range(int(os.environ["LAYERTRIM_TEST_PASSES"])):
        if _once(os.path.join(gate, f"pass-{i}")):
            return
    end = time.monotonic() + GATE_MAX_S
    while time.monotonic() < end:
        time.sleep(0.05)


GATE_MAX_S = 20.0


def mlp(layers: int = 10, width: int = 24):
    """A ReLU MLP of ``layers`` Linear layers, seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    mods = []
    for i in range(layers):
        mods += [nn.Linear(width, width if i < layers - 1 else 4), nn.ReLU()]
    return nn.Sequential(*mods[:-1])


def saved_layers(ckpt) -> list[str]:
    return sorted(p.name for p in (Path(ckpt) / "layers").glob("*.npz"))
