"""Configuration for tests that run under mpiexec: float64 default, and a check of the launch.

Every rank must be one process of the distributed test: a pytest-xdist worker (whose MPI
world would be itself alone, so every check would pass as a one-rank check) or a world of
another size than the launch asked for (``TRIVHMC_MPI_RANKS``, set by tests/mpi_launch.py)
stops the session with an error."""

import os

import pytest
import torch
from mpi4py import MPI

torch.set_default_dtype(torch.float64)


def pytest_configure(config) -> None:
    """Refuse xdist workers and a world of the wrong size (module docstring)."""
    if "PYTEST_XDIST_WORKER" in os.environ:
        raise pytest.UsageError("tests/mpi run under mpiexec, not on pytest-xdist workers (-n 0)")
    want = os.environ.get("TRIVHMC_MPI_RANKS")
    size = MPI.COMM_WORLD.Get_size()
    if want is not None and size != int(want):
        raise pytest.UsageError(f"tests/mpi launched for {want} ranks, but MPI has {size}")
