"""Group and algebra utilities for lattice gauge fields (SU(N); U(1) lives with its theory)."""

from .su_n import *  # noqa: F403
from .su_n import __all__  # noqa: F401
