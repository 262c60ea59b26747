"""Group and algebra utilities for lattice gauge fields (SU(N); U(1) lives with its theory)."""

from .su_n import (
    algebra_norm2,
    algebra_to_components,
    components_to_algebra,
    dagger,
    expm_su3,
    haar_su_n,
    project_ta,
    reunitarize,
    su_expm,
    su_generators,
    trace,
)

__all__ = [
    "algebra_norm2",
    "algebra_to_components",
    "components_to_algebra",
    "dagger",
    "expm_su3",
    "haar_su_n",
    "project_ta",
    "reunitarize",
    "su_expm",
    "su_generators",
    "trace",
]
