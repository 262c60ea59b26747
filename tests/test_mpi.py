"""Every module of tests/mpi, run under mpiexec with 1, 2 and 4 ranks.

Each module compares the distributed result with the single-rank one computed on every rank
(``MPI.COMM_SELF``), so one launch checks "N ranks == 1 rank" for its process grids.
"""

import pytest
from mpi_launch import MPI_DIR, RANKS, run_under_mpi

MODULES = sorted(p.name for p in MPI_DIR.glob("test_*.py"))


@pytest.mark.parametrize("nranks", RANKS)
@pytest.mark.parametrize("module", MODULES)
def test_under_mpiexec(module: str, nranks: int) -> None:
    run_under_mpi(module, nranks)
