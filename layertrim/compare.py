"""Compare solvers on one layer: every method at every sparsity on the same problem, in one
process, with ratios against a baseline method run alongside (``layertrim bench``).

Each row holds the achieved sparsity, the reconstruction error ||X (W - W0)^T||^2 / ||X W0^T||^2
(from the Gram), for a ReLU layer with its inputs also the error after the activation, the
best wall time over ``repeats`` runs, the iterations and the status. A method that fails on
this layer (it needs the inputs X and only a Gram was given, say) gets a row with the reason;
the others still run.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from layertrim.errors import InvalidInputError
from layertrim.problem import LayerProblem
from layertrim.solvers.registry import get_solver, run, takes_option
from layertrim.validate import check_int

DEFAULT_METHODS = ("magnitude", "wanda", "sparsegpt", "l0-admm")


@dataclass
class BenchRow:
    method: str
    target: float  # the sparsity asked for
    sparsity: float | None = None
    rel_error: float | None = None
    out_error: float | None = None  # after the ReLU (ReLU layers given X only)
    time_s: float | None = None
    iterations: int | None = None
    status: str | None = None
    error: str | None = None  # why the method failed here
    error_vs_baseline: float | None = None
    time_vs_baseline: float | None = None


def route_options(methods: Sequence[str], options: dict) -> dict[str, dict]:
    """Each method gets the options it takes; an option no method takes is refused (a typo
    would otherwise change nothing and go unnoticed)."""
    entries = {m: get_solver(m) for m in methods}
    routed: dict[str, dict] = {m: {} for m in methods}
    for key, value in options.items():
        takers = [m for m, e in entries.items() if takes_option(e, key)]
        if not takers:
            raise InvalidInputError(f"no method among {list(methods)} takes option {key!r}")
        for m in takers:
            routed[m][key] = value
    return routed


def _check_sparsities(sparsities: Sequence[float]) -> list[float]:
    out = []
    for s in sparsities:
        ok = isinstance(s, (int, float, np.number)) and not isinstance(s, bool)
        if not ok or not (0 <= s < 1):
            raise InvalidInputError(f"sparsity must be in [0, 1), got {s!r}")
        out.append(float(s))
    if not out:
        raise InvalidInputError("give at least one sparsity")
    return out


def _out_error(problem: LayerProblem, W: np.ndarray, b: np.ndarray | None) -> float | None:
    """||relu(X W^T + b) - relu(X W0^T + b0)||^2 / ||relu(X W0^T + b0)||^2 on the inputs."""
    if problem.activation != "relu" or problem.X is None:
        return None
    X = np.asarray(problem.X, dtype=np.float64)
    Y0 = X @ problem.W0.T
    Y = X @ W.T
    if problem.bias is not None:
        Y0 += problem.bias
        Y += problem.bias if b is None else b
    Y0, Y = np.maximum(Y0, 0.0), np.maximum(Y, 0.0)
    ref = float(np.sum(Y0 * Y0))
    return float(np.sum((Y - Y0) ** 2)) / ref if ref > 0 else math.inf


def compare_methods(W, X=None, *, gram=None, bias=None, methods: Sequence[str] = DEFAULT_METHODS,
                    sparsities: Sequence[float] = (0.5, 0.7, 0.9), pattern: str = "layer",
                    activation: str = "linear", repeats: int = 1, baseline: str | None = None,
                    options: dict | None = None,
                    progress: Callable[[BenchRow], None] | None = None) -> list[BenchRow]:
    """Run every method at every sparsity on one layer.

    Parameters
    ----------
    W, X, gram, bias, pattern, activation : the layer, as for :func:`layertrim.solve_layer`.
    methods : registered solver names; Net-Trim's get the sparsity as ``target_sparsity``.
    sparsities : fractions in [0, 1).
    repeats : runs per cell; the time is the best of them (the results are the first run's).
    baseline : the method the ratios are taken against (default: the first).
    options : solver settings; each method gets those it takes.
    progress : called with each finished row.

    Returns
    -------
    list of BenchRow, method-major.
    """
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise InvalidInputError("give at least one method")
    routed = route_options(methods, dict(options or {}))
    levels = _check_sparsities(sparsities)
    check_int("repeats", repeats, 1)
    baseline = methods[0] if baseline is None else baseline
    if baseline not in methods:
        raise InvalidInputError(f"baseline {baseline!r} is not among the methods {methods}")
    # one validated problem per level, shared by every method (no method sees other data)
    problems = {s: LayerProblem.create(W, X, gram=gram, bias=bias, sparsity=s, pattern=pattern,
                                       activation=activation) for s in levels}
    rows = []
    warm = next((problems[s] for s in levels if s > 0), None)  # level 0 may take a shortcut
    for method in methods:
        if warm is not None:
            _warm_up(warm, method, routed[method])
        for s in levels:
            row = BenchRow(method, s)
            try:
                best = math.inf
                for i in range(repeats):
                    t = time.perf_counter()
                    r = run(problems[s], method, **routed[method])
                    best = min(best, time.perf_counter() - t)
                    if i == 0:
                        result = r
                row.sparsity, row.rel_error = float(result.sparsity), float(result.rel_error)
                row.out_error = _out_error(problems[s], result.W, result.bias)
                row.time_s, row.iterations = best, int(result.iterations)
                row.status = result.status
            except Exception as e:  # noqa: BLE001 -- one cell's failure, reported in its row
                row.error = f"{type(e).__name__}: {e}" if not isinstance(
                    e, InvalidInputError) else str(e)
            rows.append(row)
            if progress is not None:
                progress(row)
    base = {r.target: r for r in rows if r.method == baseline and r.error is None}
    for r in rows:
        b = base.get(r.target)
        if b is None or r.error is not None:
            continue
        if b.rel_error and r.rel_error is not None:
            r.error_vs_baseline = r.rel_error / b.rel_error
        if b.time_s and r.time_s is not None:
            r.time_vs_baseline = r.time_s / b.time_s
    return rows


def _warm_up(problem: LayerProblem, method: str, options: dict) -> None:
    """One untimed run on a few rows of the layer, with its pattern and a nonzero sparsity
    (same d, so Numba's compiled kernels and the BLAS/thread-pool set-up are ready): the
    first timed cell is not charged for them."""
    k = min(problem.m, 4)
    nm = problem.pattern.kind == "nm"
    try:
        small = LayerProblem.create(problem.W0[:k], problem.X, gram=problem.H if problem.X is
                                    None else None,
                                    bias=None if problem.bias is None else problem.bias[:k],
                                    sparsity=None if nm else problem.sparsity,
                                    pattern=str(problem.pattern), activation=problem.activation)
        run(small, method, **options)
    except Exception:  # noqa: BLE001 -- the timed run reports it
        pass


def rows_to_dicts(rows: Sequence[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def format_rows(rows: Sequence[BenchRow], baseline: str) -> str:
    from layertrim.report import format_table

    has_out = any(r.out_error is not None for r in rows)
    headers = ["method", "target", "sparsity", "rel. error"] + (["after ReLU"] if has_out else [])
    headers += [f"err / {baseline}", "time", f"time / {baseline}", "iters", "status"]

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    table = []
    for r in rows:
        if r.error is not None:
            cells = [r.method, f"{r.target:.2f}", "-", "-"] + (["-"] if has_out else [])
            cells += ["-", "-", "-", "-", "failed"]
        else:
            cells = [r.method, f"{r.target:.2f}", num(r.sparsity, ".4f"), num(r.rel_error, ".3e")]
            cells += [num(r.out_error, ".3e")] if has_out else []
            cells += [num(r.error_vs_baseline, ".3f"), f"{r.time_s:.3f} s",
                      num(r.time_vs_baseline, ".2f"), str(r.iterations), str(r.status)]
        table.append(cells)
    text = format_table(headers, table)
    failed = [r for r in rows if r.error is not None]
    for r in failed:
        text += f"\n{r.method} at {r.target:g} failed: {r.error}"
    return text


def plot_rows(rows: Sequence[BenchRow], path) -> str:
    """Error and time against sparsity, one line per method, written atomically as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from layertrim.atomic import atomic_write_bytes

    fig, (ax_e, ax_t) = plt.subplots(1, 2, figsize=(10, 4))
    for method in dict.fromkeys(r.method for r in rows):
        pts = sorted((r.target, r.rel_error, r.time_s) for r in rows
                     if r.method == method and r.error is None)
        if not pts:
            continue
        x, e, t = zip(*pts, strict=True)
        ax_e.plot(x, [max(v, 1e-16) for v in e], "o-", label=method)
        ax_t.plot(x, t, "o-", label=method)
    ax_e.set(xlabel="sparsity", ylabel="relative reconstruction error", yscale="log")
    ax_t.set(xlabel="sparsity", ylabel="time (s, best run)", yscale="log")
    for ax in (ax_e, ax_t):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return str(atomic_write_bytes(path, buf.getvalue()))
