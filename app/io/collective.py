"""Run serial file work on one rank and make its failure a failure on every rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from mpi4py import MPI

T = TypeVar("T")


def on_root(fn: Callable[[], T], comm: MPI.Comm, broadcast: bool = True) -> T | None:
    """Call ``fn`` on rank 0 of ``comm``; re-raise its exception on every rank.

    With ``broadcast`` every rank gets the result (keep it small), else only rank 0 does
    and the others get ``None``.
    """
    result = error = None
    if comm.Get_rank() == 0:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised on every rank below
            error = err
    error = comm.bcast(error, root=0)
    if error is not None:
        raise error
    if broadcast:
        result = comm.bcast(result, root=0)
    return result
