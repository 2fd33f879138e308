"""The result every solver returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LayerResult:
    """Pruned weights plus everything needed to judge and reproduce them.

    Attributes
    ----------
    W : (m, d) pruned weights, exactly zero outside ``mask``.
    mask : (m, d) bool, True where a weight is kept.
    bias : (m,) bias (possibly updated by the solver), or None.
    objective : ||Xa (Wa - W0a)^T||_F^2 on the augmented inputs [X, 1] when there is a bias.
    rel_error : objective / ||Xa W0a^T||_F^2, computed from H, never from X.
    sparsity : achieved fraction of pruned weights, 1 - mask.sum() / (m d).
    nnz : number of kept weights (mask.sum()).
    iterations : solver iterations (columns swept, refit solves, ...).
    wall_time : seconds spent in the solver.
    solver : registered name; ``settings`` holds the options it ran with.
    status : "solved", or a solver-specific status string.
    history : per-iteration records (dicts) for convergence curves.
    certificate : solver-specific proof of quality, e.g. lower/upper bounds and the gap of the
        cutting-plane solver, or constraint violations; empty when the solver has none.
    """

    W: np.ndarray
    mask: np.ndarray
    bias: np.ndarray | None
    objective: float
    rel_error: float
    sparsity: float
    nnz: int
    iterations: int
    wall_time: float
    solver: str
    settings: dict = field(default_factory=dict)
    status: str = "solved"
    pattern: str = "layer"
    history: list = field(default_factory=list)
    certificate: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Scalars only, for reports and JSON."""
        return {
            "solver": self.solver,
            "pattern": self.pattern,
            "sparsity": self.sparsity,
            "nnz": self.nnz,
            "rel_error": self.rel_error,
            "objective": self.objective,
            "iterations": self.iterations,
            "wall_time": self.wall_time,
            "status": self.status,
        }

    def __repr__(self) -> str:
        m, d = self.W.shape
        return (
            f"LayerResult(solver={self.solver!r}, shape=({m}, {d}), pattern={self.pattern!r}, "
            f"sparsity={self.sparsity:.4f}, rel_error={self.rel_error:.4e}, "
            f"time={self.wall_time:.3f}s, status={self.status!r})"
        )

