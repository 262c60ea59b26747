"""Is what a reader decoded a valid field? Checks shared by the ILDG, NERSC and HDF5 readers.

* every entry finite (no NaN/inf: a byte-swapped or corrupted payload often decodes to such);
* SU(N) links unitary, ``max |U U^+ - 1| <= tol`` with a tolerance fit for the precision the
  file stores: :data:`UNITARITY_TOL` (double: 1e-9, far above the ~1e-15 of files written by
  Chroma, tmLQCD, SIMULATeQCD and trivhmc, far below what a flipped bit or a wrong byte order
  gives; single: 1e-5).

A failure raises :class:`InvalidFieldError` naming the file, the check and the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from parallel import ProcessGrid

from . import gauge_stats
from .errors import InvalidFieldError

#: largest accepted ``max |U U^+ - 1|`` per stored precision
UNITARITY_TOL = {"double": 1e-9, "single": 1e-5}


def unitarity_tolerance(precision: str) -> float:
    """Tolerance for links stored in ``precision`` (``"double"``/``"single"``)."""
    return UNITARITY_TOL["single" if str(precision).lower() in ("single", "32", "f") else "double"]


def nonfinite_count(field: np.ndarray, grid: ProcessGrid | None = None) -> int:
    """Number of non-finite entries (real and imaginary parts count once per entry)."""
    local = int(np.count_nonzero(~np.isfinite(np.asarray(field))))
    if grid is None or grid.size == 1:
        return local
    return int(grid.cart.allreduce(local, op=MPI.SUM))


def check_finite(
    field: np.ndarray, path: str, grid: ProcessGrid | None = None, hint: str = ""
) -> None:
    """Raise :class:`InvalidFieldError` if any entry of ``field`` is NaN or infinite."""
    bad = nonfinite_count(field, grid)
    if bad:
        total = np.asarray(field).size * (1 if grid is None else grid.size)
        raise InvalidFieldError(
            f"{path}: {bad} of {total} field entries are not finite (NaN or inf){hint}; "
            f"refusing a corrupted field"
        )


def check_links(
    links: np.ndarray,
    path: str,
    precision: str,
    grid: ProcessGrid | None = None,
    hint: Callable[[], str] | None = None,
    tol: float | None = None,
) -> float:
    """Check SU(N) links ``(..., N, N)`` (finite and unitary); returns the deviation.

    ``hint()`` (called collectively, only on failure) adds an explanation such as the
    endianness diagnosis of the ILDG reader."""
    tol = unitarity_tolerance(precision) if tol is None else float(tol)
    bad = nonfinite_count(links, grid)
    if bad:
        extra = f": {hint()}" if hint is not None else ""
        raise InvalidFieldError(
            f"{path}: {bad} link entries are not finite (NaN or inf){extra}; refusing a wrong field"
        )
    dev = gauge_stats.unitarity_deviation(links, grid)
    if not dev <= tol:
        extra = f": {hint()}" if hint is not None else ""
        raise InvalidFieldError(
            f"{path}: links are not unitary (max |U U^+ - 1| = {dev:.3g} > {tol:g}, the "
            f"tolerance for {precision} precision){extra}; refusing a wrong field"
        )
    return dev
