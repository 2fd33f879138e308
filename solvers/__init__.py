"""Layer solvers: one file per family, pure numpy/scipy (no framework imports).

Importing this package registers every solver; see :func:`layertrim.methods`.
"""

from layertrim.solvers import magnitude, random_mask, sparsegpt, wanda  # noqa: F401  (register)
from layertrim.solvers.refit import refit
from layertrim.solvers.registry import available, get_solver, register, run

__all__ = ["available", "get_solver", "refit", "register", "run"]
