"""Checks of an output path before a (collective) write: its directory must exist and be
writable, else one :class:`OutputPathError` naming the path (exit status 2) on every rank.

Without the check a missing directory surfaces deep inside the writer, as an MPI-IO error
from ``MPI_File_open`` or an ``OSError`` naming the writer's temporary file.
"""

from __future__ import annotations

import os
from pathlib import Path

from mpi4py import MPI

from app.errors import InputError

from .collective import on_root


class OutputPathError(InputError):
    """An output file cannot be created: its directory is missing, not a directory or not
    writable (a user error, exit status 2)."""


def output_dir_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be created in its directory, or ``None`` (this process's view)."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        return f"{path} is a directory; give a file name"
    if not parent.exists():
        return f"its directory {parent} does not exist; create it first (mkdir -p {parent})"
    if not parent.is_dir():
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"its directory {parent} is not writable"
    return None


def check_output_dir(path: str | os.PathLike, comm: MPI.Comm | None = None) -> None:
    """Raise :class:`OutputPathError` on every rank of ``comm`` (default: this process
    alone) when ``path`` cannot be created; rank 0 decides, the others follow, so the ranks
    never disagree (and none is left waiting in a collective open)."""

    def check() -> None:
        problem = output_dir_problem(path)
        if problem is not None:
            raise OutputPathError(f"cannot write {path}: {problem}")

    on_root(check, MPI.COMM_SELF if comm is None else comm, broadcast=False)
