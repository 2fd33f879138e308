"""Layer solvers: one file per family, pure numpy/scipy (no framework imports).

Importing this package registers every solver; see :func:`layertrim.methods`.
"""

from layertrim.solvers import (  # noqa: F401  (importing registers the solvers)
    coreset,
    global_threshold,
    iht,
    l0_admm,
    l0_cutting_plane,
    l0_general,
    magnitude,
    nettrim_admm,
    nettrim_cvx,
    onthefly,
    pivot,
    random_mask,
    slr,
    sparsegpt,
    taylor,
    wanda,
)
from layertrim.solvers.refit import refit
from layertrim.solvers.registry import available, get_solver, register, run

__all__ = ["available", "get_solver", "refit", "register", "run"]
