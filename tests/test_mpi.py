"""Every module of tests/mpi, run under mpiexec with 1, 2 and 4 ranks.

Each module compares the distributed result with the single-rank one computed on every rank
(``MPI.COMM_SELF``), so one launch checks "N ranks == 1 rank" for its process grids. All
modules run in one launch per rank count (one interpreter start per rank instead of one per
module: ~1 min of a CI run per rank count); the failure report names the failing test. One
module by hand: ``TRIVHMC_UNDER_MPIEXEC=1 mpiexec -n 2 python -m pytest tests/mpi/<module>``.
"""

import pytest
from mpi_launch import MPI_DIR, RANKS, run_under_mpi

MODULES = sorted(p.name for p in MPI_DIR.glob("test_*.py"))


def test_modules_found() -> None:
    """The launch below is not vacuous: tests/mpi holds the distributed checks."""
    assert len(MODULES) >= 20, MODULES


@pytest.mark.parametrize("nranks", RANKS)
def test_under_mpiexec(nranks: int) -> None:
    run_under_mpi(MODULES, nranks, timeout=1800.0)
