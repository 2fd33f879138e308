"""Parallel and cascade schedules over a model, framework-agnostic.

A bridge (``adapters/torch.py`` has one) names the layers, returns each layer's weights,
accumulates calibration Grams on the model as it currently is, and writes weights back.

- parallel: one calibration pass on the original model; every layer problem is independent,
  so all of them go through the executor at once.
- cascade: layers in forward order; layer l's Gram comes from the model already pruned up to
  l - 1, with the cross term to the dense network's inputs, and the layer is pruned towards
  the dense layer's *outputs* (``cascade_target``), so later layers absorb the earlier
  layers' error. The reported relative error is against that corrected target.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.gram import Gram
from layertrim.layerwise.executors import LayerJob, get_executor, solve_job
from layertrim.layerwise.report import LayerRecord, PruneReport
from layertrim.problem import LayerProblem

SCHEDULES = ("parallel", "cascade")


class ModelBridge(Protocol):
    def layer_names(self) -> list[str]: ...

    def groups(self, name: str) -> int: ...

    def weights(self, name: str, group: int) -> tuple[np.ndarray, np.ndarray | None]: ...

    def grams(self, names: list[str], cross: bool = False) -> dict[str, list[Gram]]: ...

    def write_back(self, name: str, group: int, W: np.ndarray, b: np.ndarray | None) -> None: ...

    def snapshot(self) -> object: ...

    def restore(self, state: object) -> None: ...

    # optional, for per-sample solvers (Net-Trim): each layer's input rows per group, paired
    # with the dense network's when cross is True, and the layers that feed a ReLU
    # def samples(self, names, cross=False) -> dict[str, list[tuple[X, X0 | None]]]: ...
    # def relu_layers(self, names) -> set[str]: ...


def sparsity_policy(sparsity, names: list[str]) -> dict[str, float]:
    """A float (uniform) or a dict by layer name covering every layer."""
    if isinstance(sparsity, dict):
        missing = [n for n in names if n not in sparsity]
        extra = [n for n in sparsity if n not in names]
        if missing or extra:
            raise InvalidInputError(f"the sparsity dict must name exactly the pruned layers: "
                                    f"missing {missing}, unknown {extra}")
        return {n: sparsity[n] for n in names}
    return {n: sparsity for n in names}


def _per_sample(method: str, bridge) -> bool:
    """Whether ``method`` needs the layers' input samples (Net-Trim), which ``bridge`` must
    then be able to provide."""
    from layertrim.solvers import get_solver

    if not get_solver(method).per_sample:
        return False
    if not hasattr(bridge, "samples"):
        raise InvalidInputError(
            f"method {method!r} needs the per-sample inputs X, which this model bridge cannot "
            f"provide; use a Gram-based method (sparsegpt, wanda, magnitude, l0-admm, slr, "
            f"iht) or prune that layer with layertrim.solve_layer")
    return True


ALLOCATIONS = ("uniform", "global", "owl")
CASCADE_DAMP = 1e-8  # relative to mean(diag H): the target's least squares, not the pruning


def cascade_target(W: np.ndarray, b: np.ndarray | None,
                   g: Gram) -> tuple[np.ndarray, np.ndarray | None]:
    """The dense weights that best map the pruned network's inputs X_hat to the original
    layer's outputs X W^T + b: the least-squares solution of X_hat_a W'^T = X_a W_a^T, from
    H = X_hat^T X_hat and the cross term X_hat^T X alone. Pruning W' on H then minimises
    ||X_hat_a W_pruned^T - X_a W_a^T||^2, the cascade objective, with any Gram solver."""
    import scipy.linalg

    if g.cross is None or g.sum0 is None:
        return W, b
    d = W.shape[1]
    if b is None:
        H, C, Wa = g.H.copy(), g.cross, W
    else:
        H = g.augmented()
        C = np.empty((d + 1, d + 1))
        C[:d, :d], C[:d, d], C[d, :d], C[d, d] = g.cross, g.sum, g.sum0, g.n
        Wa = np.hstack([W, b[:, None]])
    H[np.diag_indices_from(H)] += CASCADE_DAMP * max(float(np.mean(np.diag(H))), 1e-300)
    Wt = scipy.linalg.solve(H, C @ Wa.T, assume_a="pos").T
    return (Wt, None) if b is None else (Wt[:, :d], Wt[:, d])


def allocate(bridge: ModelBridge, names: list[str], target: float, allocation: str,
             grams: dict[str, list[Gram]]) -> dict[str, float]:
    """Per-layer sparsities for a global target (see ``allocate.py``)."""
    from layertrim.layerwise.allocate import (
        GRID,
        error_curves,
        global_allocation,
        owl_allocation,
        trim_overshoot,
    )

    sizes = [sum(bridge.weights(n, g)[0].size for g in range(bridge.groups(n))) for n in names]
    if allocation == "owl":
        scores = [np.concatenate([np.abs(bridge.weights(n, g)[0])
                                  * np.sqrt(np.maximum(np.diag(grams[n][g].H), 0.0))
                                  / max(grams[n][g].n, 1) ** 0.5
                                  for g in range(bridge.groups(n))], axis=0) for n in names]
        s = owl_allocation(scores, target)
    else:
        curves = np.array([np.mean(error_curves(
            [(*bridge.weights(n, g), grams[n][g]) for g in range(bridge.groups(n))]), axis=0)
            for n in names])
        s = trim_overshoot(global_allocation(curves, sizes, target, grid=GRID), curves, sizes,
                           target, grid=GRID)
    return {n: float(v) for n, v in zip(names, s, strict=True)}


def run_schedule(bridge: ModelBridge, *, sparsity, method: str = "l0-admm",
                 schedule: str = "cascade", pattern: str = "layer", executor=None,
                 allocation: str = "global", progress: bool = False,
                 **solver_options) -> PruneReport:
    """Prune every layer of ``bridge`` in place and report what was done. A failure in any
    layer names it and leaves the model untouched (weights are restored).

    ``allocation`` turns a float ``sparsity`` into per-layer sparsities: "global" (the default;
    error-curve dynamic programming, the fraction counts all weights), "uniform" (the same
    everywhere) or "owl" (outlier-weighted). A dict, or None with an N:M pattern, is used as
    given. ``progress`` shows a bar over the layers (tqdm, on stderr)."""
    from tqdm.auto import tqdm

    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if allocation not in ALLOCATIONS:
        raise InvalidInputError(f"unknown allocation {allocation!r}; use one of {ALLOCATIONS}")
    per_sample = _per_sample(method, bridge)
    ex = get_executor(executor)
    names = bridge.layer_names()
    clock = {"calibration_s": 0.0, "allocation_s": 0.0, "solve_s": 0.0, "writeback_s": 0.0}
    t_start = time.perf_counter()

    def grams_of(layer_names, cross=False):
        t = time.perf_counter()
        out = bridge.grams(layer_names, cross)
        clock["calibration_s"] += time.perf_counter() - t
        return out

    dense_grams = None
    if allocation != "uniform" and sparsity is not None and not isinstance(sparsity, dict):
        dense_grams = grams_of(names)
        t = time.perf_counter()
        sparsity = allocate(bridge, names, sparsity, allocation, dense_grams)
        clock["allocation_s"] += time.perf_counter() - t
    policy = sparsity_policy(sparsity, names)
    report = PruneReport(schedule=schedule, method=method, allocation=dict(policy))
    bar = tqdm(total=sum(bridge.groups(n) for n in names), desc=f"{method} {schedule}",
               unit="layer", disable=not progress)

    def jobs_for(grams: dict[str, list[Gram]], layer_names: list[str]) -> list[LayerJob]:
        jobs = []
        for name in layer_names:
            for g in range(bridge.groups(name)):
                W, b = cascade_target(*bridge.weights(name, g), grams[name][g])
                try:
                    problem = LayerProblem.create(W, gram=grams[name][g], bias=b,
                                                  sparsity=policy[name], pattern=pattern)
                except InvalidInputError as e:
                    raise InvalidInputError(f"layer {name}: {e}") from None
                jobs.append(LayerJob(name, g, problem, method, dict(solver_options)))
        return jobs

    def sample_jobs(layer_names: list[str], cascade: bool) -> list[LayerJob]:
        from layertrim.layerwise.per_sample import per_sample_jobs

        t = time.perf_counter()
        jobs, dense = per_sample_jobs(bridge, layer_names, policy, method, cascade,
                                      solver_options)
        clock["calibration_s"] += time.perf_counter() - t
        for name, g in dense:  # allotted no sparsity: left as it is
            W = bridge.weights(name, g)[0]
            report.layers.append(LayerRecord(
                name=name, group=g, m=W.shape[0], d=W.shape[1], nnz=int(np.count_nonzero(W)),
                sparsity=1.0 - np.count_nonzero(W) / W.size, rel_error=0.0, time_s=0.0,
                status="dense", solver=method))
            bar.update(1)
        return jobs

    def finish(jobs: list[LayerJob]) -> None:
        t = time.perf_counter()
        results = []
        it = iter(ex.map(solve_job, jobs))
        for job in jobs:  # every result is in hand before anything is written back
            bar.set_postfix_str(job.name)
            try:
                results.append(next(it))
                bar.update(1)
            except InvalidInputError as e:
                raise InvalidInputError(f"layer {job.name}: {e}") from None
            except Exception as e:
                raise RuntimeError(f"layer {job.name}: the {method} solve failed: "
                                   f"{type(e).__name__}: {e}") from e
        clock["solve_s"] += time.perf_counter() - t
        t = time.perf_counter()
        for job, r in zip(jobs, results, strict=True):
            bridge.write_back(job.name, job.group, r.W, r.bias)
            report.layers.append(LayerRecord(
                name=job.name, group=job.group, m=job.problem.m, d=job.problem.d, nnz=r.nnz,
                sparsity=r.sparsity, rel_error=r.rel_error, time_s=r.wall_time,
                status=r.status, solver=r.solver))
        clock["writeback_s"] += time.perf_counter() - t

    state = bridge.snapshot()
    try:
        if per_sample:
            if schedule == "parallel":
                finish(sample_jobs(names, cascade=False))
            else:
                for name in names:
                    finish(sample_jobs([name], cascade=True))
        elif schedule == "parallel":
            finish(jobs_for(dense_grams or grams_of(names), names))
        else:
            for name in names:
                finish(jobs_for(grams_of([name], cross=True), [name]))
    except BaseException:
        bridge.restore(state)  # a failed run leaves the model as it came (Ctrl-C included)
        raise
    finally:
        bar.close()
    report.timing = {**clock, "wall_s": time.perf_counter() - t_start}
    return report
