"""PNG figures for the benchmarks (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

from layertrim.atomic import atomic_write_bytes


def plot_layer_baselines(
    records: list[dict], path: str | Path, *, d_error: int | None = None
) -> Path:
    """Left: relative error vs sparsity at one layer size. Right: time per layer vs d at 70%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted({r["d"] for r in records})
    d_error = d_error or max(dims)
    solvers = list(dict.fromkeys(r["solver"] for r in records))
    fig, (ax_err, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in solvers:
        pts = sorted((r["sparsity"], r["rel_error"]) for r in records
                     if r["solver"] == name and r["d"] == d_error)
        if pts:
            ax_err.plot(*zip(*pts, strict=True), marker="o", label=name)
        tpts = sorted((r["d"], r["time_s"]) for r in records
                      if r["solver"] == name and r["sparsity"] == 0.7)
        if tpts:
            ax_time.plot(*zip(*tpts, strict=True), marker="o", label=name)
    ax_err.set(xlabel="sparsity", ylabel="relative reconstruction error", yscale="log",
               title=f"error vs sparsity (d = m = {d_error}, n = 4d)")
    ax_time.set(xlabel="d (= m)", ylabel="seconds per layer", xscale="log", yscale="log",
                title="time per layer at 70% sparsity")
    ax_time.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax_time.set_xticks(dims, [str(d) for d in dims])
    for ax in (ax_err, ax_time):
        ax.grid(True, which="both", alpha=0.3)
    ax_err.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
