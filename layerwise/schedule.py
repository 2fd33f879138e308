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
from layertrim.layerwise.executors import LayerJob, get_executor, job_key, solver_module
from layertrim.layerwise.report import LayerRecord, PruneReport
from layertrim.layerwise.runner import Progress, layer_seed, run_jobs, takes_seed
from layertrim.pattern import Pattern
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
    # optional: each layer's output in the pruned network against the dense one's, per group,
    # the dense network being the cascade's copy or one built from a snapshot() (parallel)
    # def output_errors(self, names, dense=None) -> dict[str, list[float]] | None: ...


def _fraction_ok(s) -> bool:
    return s is None or (isinstance(s, (int, float, np.integer, np.floating))
                         and not isinstance(s, bool) and 0 <= s < 1)


def _not_a_fraction(s, where: str = "") -> InvalidInputError:
    if isinstance(s, (int, float, np.integer, np.floating)) and not isinstance(s, bool):
        return InvalidInputError(f"{where}sparsity {s!r} is outside [0, 1)")
    return InvalidInputError(f"{where}sparsity must be a number in [0, 1) (or, for the model, "
                             f"a dict by layer name), got {type(s).__name__} {s!r}")


def check_sparsity_values(sparsity: dict) -> None:
    """Every value of a per-layer sparsity dict is None or a fraction in [0, 1)."""
    for n, s in sparsity.items():
        if not _fraction_ok(s):
            raise _not_a_fraction(s, f"layer {n}: ")


def sparsity_policy(sparsity, names: list[str]) -> dict[str, float]:
    """A float (uniform) or a dict by layer name covering every layer; each value None (the
    solver's own rule, Net-Trim's gain) or a fraction in [0, 1)."""
    if not isinstance(sparsity, dict):
        if not _fraction_ok(sparsity):
            raise _not_a_fraction(sparsity)
        return {n: sparsity for n in names}
    check_sparsity_values(sparsity)  # the values first: a bad one is named even among typos
    missing = [n for n in names if n not in sparsity]
    extra = [n for n in sparsity if n not in names]
    if extra:
        raise InvalidInputError(f"the sparsity dict names {extra}, which are not among the "
                                f"pruned layers {names}")
    if missing:
        raise InvalidInputError(f"the sparsity dict must name every pruned layer: missing "
                                f"{missing}")
    return {n: sparsity[n] for n in names}


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
PINV_RTOL = 1e-6  # eigenvalue cut of the rank-deficient fallback, relative to the largest


def cascade_target(W: np.ndarray, b: np.ndarray | None,
                   g: Gram) -> tuple[np.ndarray, np.ndarray | None]:
    """The dense weights that best map the pruned network's inputs X_hat to the original
    layer's outputs X W^T + b: the least-squares solution of X_hat_a W'^T = X_a W_a^T nearest
    to W (W plus the minimum-norm change), from H = X_hat^T X_hat and the cross term X_hat^T X
    alone. Pruning W' on H then minimises
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
    # solved for the change from W rather than for the weights themselves: where the pruned
    # inputs carry no information (fewer rows than inputs, constant or dead inputs) the
    # damping then keeps W's own weights instead of shrinking them to zero (which rewrote
    # every layer of a rank-deficient network by 70-90% at sparsity 0), and with X_hat = X
    # (the first layer, an unpruned prefix) the target is W exactly
    R = (C - H) @ Wa.T  # X_hat^T (X W^T - X_hat W^T)
    H[np.diag_indices_from(H)] += CASCADE_DAMP * max(float(np.mean(np.diag(H))), 1e-300)
    try:
        D = scipy.linalg.solve(H, R, assume_a="pos").T
    except np.linalg.LinAlgError:
        # X_hat is rank-deficient and the Gram's rounding (float32 sums, adapters/torch.py)
        # exceeds the damping in its null space: the minimum-norm change, cutting eigenvalues
        # at that rounding
        lam, Vec = scipy.linalg.eigh(H)
        keep = lam > PINV_RTOL * lam[-1]
        D = ((Vec[:, keep] / lam[keep]) @ (Vec[:, keep].T @ R)).T
    Wt = Wa + D
    return (Wt, None) if b is None else (Wt[:, :d], Wt[:, d])


def allocate(bridge: ModelBridge, names: list[str], target: float, allocation: str,
             grams: dict[str, list[Gram]], method: str = "sparsegpt",
             pattern: str = "layer") -> dict[str, float]:
    """Per-layer sparsities for a global target (see ``allocate.py``); the error curves are
    drawn by ``curve_method(method)``. No layer gets more than it can take: every group keeps
    a weight, and with the "row" pattern every row."""
    from layertrim.layerwise.allocate import (
        allocation_grid,
        curve_method,
        error_curves,
        global_allocation,
        owl_allocation,
        trim_overshoot,
    )

    sizes = [sum(bridge.weights(n, g)[0].size for g in range(bridge.groups(n))) for n in names]
    # the largest sparsity a layer can take with every group (every row) keeping a weight
    rows = Pattern.parse(pattern).kind == "row"
    keep = [sum(bridge.weights(n, g)[0].shape[0] if rows else 1 for g in range(bridge.groups(n)))
            for n in names]
    caps = np.array([1 - k / size for k, size in zip(keep, sizes, strict=True)])
    if allocation == "owl":
        scores = [np.concatenate([np.abs(bridge.weights(n, g)[0])
                                  * np.sqrt(np.maximum(np.diag(grams[n][g].H), 0.0))
                                  / max(grams[n][g].n, 1) ** 0.5
                                  for g in range(bridge.groups(n))], axis=0) for n in names]
        s = owl_allocation(scores, target, caps=caps)
    else:
        grid = allocation_grid(target)
        curves = np.array([np.mean(error_curves(
            [(*bridge.weights(n, g), grams[n][g]) for g in range(bridge.groups(n))],
            grid=grid, method=curve_method(method)), axis=0)
            for n in names])
        # a level is out of reach when the layer's count would leave a group without a weight
        # (each group rounding alone can look feasible: 0.925 of 9 keeps one)
        curves[np.asarray(grid)[None, :] > caps[:, None] + 1e-12] = np.inf
        s = trim_overshoot(global_allocation(curves, sizes, target, grid=grid), curves, sizes,
                           target, grid=grid)
    return {n: float(v) for n, v in zip(names, s, strict=True)}


def exact_kept(bridge: ModelBridge, names: list[str], sparsities: dict,
               budget: float | None) -> dict[str, int]:
    """Kept weights by job key, whole weights per group (``allocate.exact_counts``): with a
    ``budget`` (global, owl) all layers together prune exactly round(budget x all weights);
    without one (uniform, a dict) each layer prunes round(s x size) of its own. A layer's
    groups share its count, at most all but one weight of each (a larger count is held there
    and the report warns); a layer whose sparsity is None is left to its solver."""
    from layertrim.layerwise.allocate import exact_counts

    groups = {n: [bridge.weights(n, g)[0].size for g in range(bridge.groups(n))] for n in names}
    if budget is not None:
        counts = dict(zip(names, exact_counts([sparsities[n] for n in names],
                                              [groups[n] for n in names], budget), strict=True))
    else:
        counts = {n: exact_counts([sparsities[n]], [groups[n]], sparsities[n])[0]
                  for n in names if sparsities[n] is not None}
    return {job_key(n, g): k for n, ks in counts.items() for g, k in enumerate(ks)}


def _manifest(bridge: ModelBridge, names: list[str], settings: dict) -> dict:
    """What a resume must match: the model, the calibration data, the settings, the layers."""
    from layertrim.layerwise.checkpoint import fingerprint

    if hasattr(bridge, "fingerprint"):
        model = bridge.fingerprint()
    else:  # the pruned layers' weights
        model = fingerprint(*[a for n in names for g in range(bridge.groups(n))
                              for a in bridge.weights(n, g) if a is not None])
    calib = bridge.calibration_fingerprint() if hasattr(bridge, "calibration_fingerprint") \
        else None
    layers = []
    for n in names:
        for g in range(bridge.groups(n)):
            W = bridge.weights(n, g)[0]
            key = job_key(n, g)
            layers.append({"key": key, "m": int(W.shape[0]), "d": int(W.shape[1])})
    return {"model": model, "calibration": calib, "settings": settings, "layers": layers}


def run_schedule(bridge: ModelBridge, *, sparsity, method: str = "l0-admm",
                 schedule: str = "cascade", pattern: str = "layer", executor=None,
                 allocation: str = "global", checkpoint=None, resume: bool = False,
                 progress: Progress | None = None, **solver_options) -> PruneReport:
    """Prune every layer of ``bridge`` in place and report what was done. A failure in any
    layer names it and leaves the model untouched (weights are restored); in the parallel
    schedule the other layers still finish (and are checkpointed) first.

    ``allocation`` turns a float ``sparsity`` into per-layer sparsities: "global" (the default;
    error-curve dynamic programming, the fraction counts all weights), "uniform" (the same
    everywhere) or "owl" (outlier-weighted). A dict, or None with an N:M pattern, is used as
    given.

    ``checkpoint`` : a directory; each finished layer is saved there as it arrives (see
    ``checkpoint.py``). With ``resume=True`` the layers already there are not solved again
    (their weights are written back from the files), after the manifest is checked against
    this model, calibration data and settings. ``progress(done, total, key, result)`` is
    called as each layer finishes. A solver that takes a ``seed`` gets a per-layer seed
    derived from ``seed`` (default 0) and the layer's name."""
    if schedule not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if allocation not in ALLOCATIONS:
        raise InvalidInputError(f"unknown allocation {allocation!r}; use one of {ALLOCATIONS}")
    if resume and checkpoint is None:
        raise InvalidInputError("resume needs the checkpoint directory to resume from")
    from layertrim.solvers import available, get_solver

    if not get_solver(method).whole_model:
        whole = [n for n in available() if get_solver(n).whole_model and not n.startswith(
            "test-")]
        raise InvalidInputError(
            f"method {method!r} prunes single layers only (layertrim.solve_layer, given the "
            f"layer's input samples X and its activation); for a whole model use one of "
            f"{whole}")
    ex = get_executor(executor)
    owned = isinstance(executor, str) or executor is None  # made here: closed here
    try:
        if hasattr(ex, "connect"):  # join a cluster first: an unreachable one fails fast
            ex.connect()
        return _run(bridge, ex, sparsity=sparsity, method=method, schedule=schedule,
                    pattern=pattern, allocation=allocation, checkpoint=checkpoint,
                    resume=resume, progress=progress, solver_options=solver_options)
    finally:
        if owned and hasattr(ex, "close"):
            ex.close()


def _run(bridge: ModelBridge, ex, *, sparsity, method: str, schedule: str, pattern: str,
         allocation: str, checkpoint, resume: bool, progress: Progress | None,
         solver_options: dict) -> PruneReport:
    from layertrim.layerwise.checkpoint import Checkpoint, jsonable
    from layertrim.layerwise.per_sample import left_dense, per_sample_jobs

    per_sample = _per_sample(method, bridge)
    if per_sample and Pattern.parse(pattern).kind != "layer":
        raise InvalidInputError(f"method {method!r} prunes without structure (its l1 program "
                                f"picks the support); pattern {pattern} needs another method")
    names = bridge.layer_names()
    ckpt = None
    if checkpoint is not None:
        ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else Checkpoint(
            checkpoint, resume=resume)
        settings = jsonable({"method": method, "schedule": schedule, "pattern": pattern,
                             "allocation": allocation, "sparsity": sparsity,
                             "solver_options": solver_options})
        if per_sample:  # the sampled rows are the per-sample solvers' data
            settings["max_samples"] = getattr(bridge, "max_samples", None)
        done = ckpt.open(_manifest(bridge, names, settings))
        ckpt.log("start", resume=bool(resume), skipped=sorted(done))
    else:
        done = {}
    seeded = takes_seed(method)
    module = solver_module(method)
    base_seed = solver_options.get("seed", 0)
    clock = {"calibration_s": 0.0, "allocation_s": 0.0, "solve_s": 0.0, "writeback_s": 0.0}
    t_start = time.perf_counter()

    def grams_of(layer_names, cross=False):
        t = time.perf_counter()
        out = bridge.grams(layer_names, cross)
        clock["calibration_s"] += time.perf_counter() - t
        return out

    sparsity_policy(sparsity, names)  # a value outside [0, 1) is refused before any work
    dense_grams = None
    kept: dict[str, int] = {}  # kept weights by job key, where the allocation fixed them
    fixed = Pattern.parse(pattern).kind == "nm"  # N:M fixes every layer's sparsity
    budget = sparsity if not fixed and not isinstance(sparsity, dict) else None
    if budget is not None and allocation != "uniform":
        dense_grams = grams_of(names)
        t = time.perf_counter()
        sparsity = allocate(bridge, names, budget, allocation, dense_grams, method, pattern)
        clock["allocation_s"] += time.perf_counter() - t
    policy = sparsity_policy(sparsity, names)
    if not fixed and Pattern.parse(pattern).kind == "layer" and not per_sample:
        # whole weights per group: a layer's groups together prune exactly its share (uniform,
        # a dict), or all layers together exactly the budget (global, owl)
        kept = exact_kept(bridge, names, policy,
                          budget if allocation != "uniform" else None)
    report = PruneReport(schedule=schedule, method=method, allocation=dict(policy))
    # the progress count covers the solved groups: a per-sample layer left dense has no job
    total = sum(bridge.groups(n) for n in names if not (per_sample and left_dense(policy, n)))

    def jobs_for(grams: dict[str, list[Gram]], layer_names: list[str]) -> list[LayerJob]:
        jobs = []
        for name in layer_names:
            for g in range(bridge.groups(name)):
                if job_key(name, g) in done:
                    continue  # checkpointed: no problem to build
                W, b = cascade_target(*bridge.weights(name, g), grams[name][g])
                try:
                    key = job_key(name, g)
                    target = ({"nnz": kept[key]} if key in kept
                              else {"sparsity": policy[name]})
                    problem = LayerProblem.create(W, gram=grams[name][g], bias=b,
                                                  pattern=pattern, **target)
                except InvalidInputError as e:
                    raise InvalidInputError(f"layer {name}: {e}") from None
                jobs.append(LayerJob(name, g, problem, method, dict(solver_options)))
        return jobs

    dense: set[str] = set()  # per-sample layers allotted no sparsity: left as they are

    def sample_jobs(layer_names: list[str], cascade: bool) -> list[LayerJob]:
        todo = [n for n in layer_names if not all_done([n])]
        if not todo:
            return []
        t = time.perf_counter()
        jobs, kept = per_sample_jobs(bridge, todo, policy, method, cascade, solver_options)
        clock["calibration_s"] += time.perf_counter() - t
        dense.update(job_key(n, g) for n, g in kept)
        return [j for j in jobs if j.key not in done]  # a layer's checkpointed groups

    def finish(layer_names: list[str], jobs: list[LayerJob]) -> None:
        t = time.perf_counter()
        for job in jobs:
            job.module = module
            if seeded:
                job.options["seed"] = layer_seed(base_seed, job.key)
        if ckpt is not None and jobs:
            ckpt.log("submit", layers=[j.key for j in jobs])
        finished = sum(job_key(n, g) in done for n in layer_names
                       for g in range(bridge.groups(n)))
        results = {**done, **run_jobs(ex, jobs, method=method, checkpoint=ckpt,
                                      progress=progress, total=total,
                                      start=finished + sum(r.status != "dense"
                                                           for r in report.layers))}
        clock["solve_s"] += time.perf_counter() - t
        t = time.perf_counter()
        for name in layer_names:
            for g in range(bridge.groups(name)):
                key = job_key(name, g)
                W0 = bridge.weights(name, g)[0]
                if key in dense:
                    report.layers.append(LayerRecord(
                        name=name, group=g, m=W0.shape[0], d=W0.shape[1],
                        nnz=int(np.count_nonzero(W0)), sparsity=1 - np.count_nonzero(W0) / W0.size,
                        rel_error=0.0, time_s=0.0, status="dense", solver=method))
                    continue
                r = results[key]
                bridge.write_back(name, g, r.W, r.bias)
                # counted as the model holds them: zeros the solver kept in its mask, and
                # weights a float16 model rounds to zero
                nnz = int(np.count_nonzero(bridge.weights(name, g)[0]))
                report.layers.append(LayerRecord(
                    name=name, group=g, m=W0.shape[0], d=W0.shape[1], nnz=nnz,
                    sparsity=1 - nnz / r.W.size, rel_error=r.rel_error, time_s=r.wall_time,
                    status=r.status, solver=r.solver, resumed=key in done,
                    kept=int(np.count_nonzero(r.mask))))
        clock["writeback_s"] += time.perf_counter() - t

    def all_done(layer_names):
        return all(job_key(n, g) in done
                   for n in layer_names for g in range(bridge.groups(n)))

    state = bridge.snapshot()
    try:
        if per_sample:
            if schedule == "parallel":
                finish(names, sample_jobs(names, cascade=False))
            else:
                for name in names:
                    finish([name], sample_jobs([name], cascade=True))
        elif schedule == "parallel":
            todo = [n for n in names if not all_done([n])]  # a resume needs only these
            grams = dense_grams or (grams_of(todo) if todo else {})
            finish(names, jobs_for(grams, names))
        else:
            for name in names:
                grams = {} if all_done([name]) else grams_of([name], cross=True)
                finish([name], jobs_for(grams, [name]))
    except BaseException:
        bridge.restore(state)  # a failed run leaves the model as it came (Ctrl-C included)
        raise
    if hasattr(bridge, "output_errors"):
        t = time.perf_counter()
        try:  # a measurement of the finished prune: its failure must not undo the prune
            errors = (bridge.output_errors(names, dense=state) if schedule == "parallel"
                      else bridge.output_errors(names))
        except Exception as e:
            errors = None
            report.notes.append(f"the errors against the dense network were not measured: "
                                f"{type(e).__name__}: {e}")
        for rec in report.layers if errors else []:
            rec.rel_error_dense = errors[rec.name][rec.group]
        clock["vs_dense_s"] = time.perf_counter() - t
    report.timing = {**clock, "wall_s": time.perf_counter() - t_start}
    return report
