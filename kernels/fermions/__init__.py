"""Lattice fermions: the 2D Wilson-Dirac operator (matrix-free, distributed) and the
conjugate-gradient solver on its normal equations.

See :mod:`kernels.fermions.wilson` for the operator and its conventions and
:mod:`kernels.fermions.cg` for the solver.
"""

from .cg import CGNotConverged, CGResult, conjugate_gradient
from .wilson import GAMMA, WilsonDirac, apply_gamma

__all__ = [
    "GAMMA",
    "CGNotConverged",
    "CGResult",
    "WilsonDirac",
    "apply_gamma",
    "conjugate_gradient",
]
