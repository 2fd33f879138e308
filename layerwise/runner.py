"""Running a batch of layer jobs through an executor: skip what a checkpoint already holds,
save each result as it arrives, report progress, and collect the failures by layer name
instead of stopping at the first (the other layers still finish and are checkpointed)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.layerwise.executors import LayerJob, outcomes, solve_job
from layertrim.result import LayerResult

Progress = Callable[[int, int, str, LayerResult], None]


class LayerJobsFailed(RuntimeError):
    """Some layer jobs failed; ``failures`` maps each layer key to its exception. The finished
    layers are in the checkpoint (when there is one), so a resume redoes only these."""

    def __init__(self, failures: dict[str, BaseException], method: str) -> None:
        self.failures = failures
        lines = [f"layer {k}: the {method} solve failed: {type(e).__name__}: {e}"
                 for k, e in failures.items()]
        super().__init__("; ".join(lines))


def progress_bar(desc: str, *, lines: bool = False) -> Progress:
    """A ``Progress`` that moves a tqdm bar over the layers (on stderr); with ``lines`` it also
    prints one line per finished layer above the bar."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int, key: str, result: LayerResult) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="layer", file=sys.stderr)
        elif bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        bar.set_postfix_str(key)
        if lines:
            bar.write(f"[{done}/{total}] {key}: sparsity {result.sparsity:.4f}, rel.err "
                      f"{result.rel_error:.2e}, {result.wall_time:.2f}s", file=sys.stderr)
        if done >= total:
            bar.close()

    return update


def layer_seed(base: int, key: str) -> int:
    """A per-layer seed from the run's seed and the layer's key: the same in every process
    (no Python ``hash``), different across layers."""
    seq = np.random.SeedSequence([int(base), zlib.crc32(key.encode())])
    return int(seq.generate_state(1)[0] & 0x7FFFFFFF)


def takes_seed(method: str) -> bool:
    from layertrim.solvers import get_solver
    from layertrim.solvers.registry import takes_option

    return takes_option(get_solver(method), "seed")


def run_jobs(executor, todo: Sequence[LayerJob], *, method: str, checkpoint=None,
             progress: Progress | None = None, start: int = 0,
             total: int | None = None) -> dict[str, LayerResult]:
    """Results by job key, each saved to ``checkpoint`` as it arrives; ``progress`` counts
    from ``start`` of ``total``. Raises :class:`LayerJobsFailed` (or ``InvalidInputError``
    when every failure is bad input) after all the other jobs have finished and been saved."""
    results: dict[str, LayerResult] = {}
    count, total = start, len(todo) if total is None else total
    failures: dict[str, BaseException] = {}
    for i, out in outcomes(executor, solve_job, todo):
        job = todo[i]
        if isinstance(out, BaseException):
            failures[job.key] = out
            if checkpoint is not None:
                checkpoint.log("failed", layer=job.key, error=f"{type(out).__name__}: {out}")
            continue
        if checkpoint is not None:
            checkpoint.save(job.key, out)
        results[job.key] = out
        count += 1
        if progress is not None:
            progress(count, total, job.key, out)
    if failures:
        if all(isinstance(e, InvalidInputError) for e in failures.values()):
            raise InvalidInputError("; ".join(f"layer {k}: {e}" for k, e in failures.items()))
        raise LayerJobsFailed(failures, method) from next(iter(failures.values()))
    return results
