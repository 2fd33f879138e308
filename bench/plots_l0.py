"""PNG figures for bench/l0.py (matplotlib, headless)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from layertrim.atomic import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_quality(out: dict, path) -> Path:
    """Error relative to sparsegpt per layer and target, one panel per target."""
    plt = _plt()
    recs = out["results"]
    targets = list(dict.fromkeys(r["target"] for r in recs))
    layers = list(dict.fromkeys(r["layer"] for r in recs))
    solvers = [s for s in dict.fromkeys(r["solver"] for r in recs) if s != "sparsegpt"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4 * len(targets), 4.2), sharey=True)
    x = np.arange(len(layers))
    width = 0.8 / len(solvers)
    for ax, t in zip(np.atleast_1d(axes), targets, strict=True):
        for i, s in enumerate(solvers):
            vals = [next((r["error_vs_sparsegpt"] for r in recs if r["layer"] == lay
                          and r["target"] == t and r["solver"] == s), np.nan) for lay in layers]
            ax.bar(x + i * width, vals, width, label=s)
        ax.axhline(1.0, color="k", lw=1)
        ax.set(title=f"{t}", yscale="log")
        ax.set_xticks(x + 0.4 - width / 2, layers, rotation=60, fontsize=7)
    np.atleast_1d(axes)[0].set_ylabel("relative error / sparsegpt's (log)")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(out: dict, path) -> Path:
    """Error vs time, both relative to sparsegpt, for every solver run and every budget."""
    plt = _plt()
    pts = out["results"] + out["pareto"]
    fig, ax = plt.subplots(figsize=(7, 5))
    for s in dict.fromkeys(r["solver"] for r in pts):
        rs = [r for r in pts if r["solver"] == s and r["error_vs_sparsegpt"]]
        ax.scatter([r["time_vs_sparsegpt"] for r in rs], [r["error_vs_sparsegpt"] for r in rs],
                   label=s, s=14, alpha=0.7)
    ax.axhline(1.0, color="k", lw=1)
    ax.axvline(1.0, color="k", lw=1)
    ax.axvline(2.0, color="gray", lw=1, ls="--")
    ax.set(xscale="log", yscale="log", xlabel="time / sparsegpt's time",
           ylabel="relative error / sparsegpt's",
           title="error vs time (all layers and targets; budgets 1x, 2x, 4x sparsegpt)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scaling(out: dict, path) -> Path:
    """Log-log l0-admm setup (eigendecomposition) and per-iteration time against d."""
    plt = _plt()
    sc = out["scaling"]
    d = np.array([r["d"] for r in sc["rows"]], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key, label in (("setup_s", "setup (eigh, O(d^3))"),
                       ("time_per_iter_s", "per iteration (O(d^2 m))")):
        y = np.array([r[key] for r in sc["rows"]])
        slope = sc["fitted_slopes"][key]
        ax.loglog(d, y, "o-", label=f"{label}: fitted slope {slope:.2f}")
    ax.set(xlabel="d (m fixed)", ylabel="seconds", title="l0-admm cost growth in d")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_convergence(out: dict, path) -> Path:
    """Objective of the projected iterate per iteration: l0-admm vs slr vs iht."""
    plt = _plt()
    conv = out["convergence"]
    ref = conv["reference_energy"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s, curve in conv["curves"].items():
        if s.endswith("final"):
            continue
        ax.plot([c["iter"] for c in curve], [c["objective"] / ref for c in curve], label=s)
        ax.axhline(conv["curves"][s + " final"] / ref, ls=":", lw=1,
                   color=ax.get_lines()[-1].get_color())
    ax.set(xlabel="iteration", ylabel="relative error of the sparse iterate", yscale="log",
           title=f"convergence on {conv['layer']} at {conv['target']} (dotted: after refit)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
