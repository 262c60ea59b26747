"""Exceptions the command line maps to exit codes (the table is in docs/errors.md).

Every failure a user can trigger ends in one message from world rank 0 and an exit status
that names its kind:

====  ==========================  ===================================================
code  exception                   meaning
====  ==========================  ===================================================
0                                 success
1     (anything else)             internal error (a bug): rerun with ``--debug``
2     :class:`InputError`         bad input: deck, ``--set``, option, input file
                                  (also a corrupt file: ``app.io.errors.ConfigFormatError``)
3                                 ``run --status``: more trajectories are needed
4     :class:`LayoutError`        the lattice / replicas do not fit the rank count
5     :class:`DeviceError`        the deck's device is not usable with this torch
6     :class:`MissingDependency`  an optional package (an extra) is not installed
7     :class:`MissingModelError`  the deck's sampler model is not in the registry
8     :class:`StorageError`       disk full, quota exceeded (``ENOSPC``/``EDQUOT``)
130                               interrupted (Ctrl-C, SIGINT)
143                               ``run`` stopped by SIGTERM, after a checkpoint
141                               output pipe closed (``trivhmc analyze | head``)
====  ==========================  ===================================================

:class:`TrivhmcError` and its subclasses are *collective*: under MPI every rank raises the
same error at the same point (they come from the deck, the rank count or files every rank
reads), so the command line prints the message on world rank 0 only and every rank exits
with the same status, without ``MPI_Abort``. Code that finds a problem on one rank only must
make it collective first (:func:`app.io.collective.on_root`).

``InputError`` deliberately does *not* derive from ``ValueError``: pydantic would otherwise
swallow it inside validators and turn it into a generic validation message.
"""

from __future__ import annotations

import errno
import os
import sys


class TrivhmcError(Exception):
    """Base of the errors with a documented exit status (raised on every rank)."""

    exit_code = 1


class InputError(TrivhmcError):
    """Bad user input (deck, file, command-line option): exit status 2, no traceback."""

    exit_code = 2


class LayoutError(InputError):
    """The lattice, process grid or replica count does not fit the ranks (exit 4)."""

    exit_code = 4


class DeviceError(TrivhmcError):
    """The deck's ``parallel.device`` is not available in this torch build (exit 5)."""

    exit_code = 5


class MissingDependency(TrivhmcError):
    """An optional package is not installed; the message gives the install command (exit 6)."""

    exit_code = 6

    def __init__(self, package: str, extra: str, purpose: str) -> None:
        self.package, self.extra = package, extra
        super().__init__(
            f"{purpose} needs {package}, which is not installed; install it with "
            f"`pip install 'trivhmc[{extra}]'` (or `pip install {package}`)"
        )


class MissingModelError(InputError):
    """The deck's sampler model (a flow, an L2HMC model) is not in the model registry (exit 7)."""

    exit_code = 7


class StorageError(TrivhmcError, OSError):
    """Writing failed because the file system is full or over quota (exit 8).

    Also an ``OSError``, so code that handles I/O errors keeps working; the storage layer
    (app/io) may raise subclasses. A plain ``OSError`` with ``errno`` ``ENOSPC`` or
    ``EDQUOT`` is mapped to the same status by the command line.
    """

    exit_code = 8


class NotAvailableError(TrivhmcError):
    """A subcommand exists in the interface but is not implemented in this build (status 1)."""

    exit_code = 1


#: exit status of an interrupt and of a closed output pipe (128 + signal number)
EXIT_SIGNAL_BASE = 128
EXIT_INTERRUPTED = 130
#: ``trivhmc run`` stopped by SIGTERM after writing a checkpoint (128 + 15)
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141
EXIT_INTERNAL = 1

STORAGE_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e)

#: optional module -> (pip extra that installs it, what it is used for)
OPTIONAL_MODULES = {
    "matplotlib": ("analysis", "plotting"),
    "pyerrors": ("analysis", "the pyerrors analysis"),
    "cupy": ("gpu", "the cupy kernels"),
}


def is_storage_error(exc: BaseException) -> bool:
    """True for a full or over-quota file system, whatever the exception class."""
    return isinstance(exc, StorageError) or (
        isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS
    )


def storage_error_from(exc: BaseException, what: str, advice: str = "") -> StorageError | None:
    """The :class:`StorageError` ``"{what}: {reason}{advice}"`` (``reason``: the text of its
    ``errno``, e.g. "No space left on device") to raise in place of ``exc`` when ``exc`` is a
    plain ``OSError`` of a full or over-quota file system (:func:`is_storage_error`); None
    for anything else (the caller re-raises it), also for a :class:`StorageError`, which
    carries its own message already."""
    if isinstance(exc, StorageError) or not is_storage_error(exc):
        return None
    return StorageError(f"{what}: {os.strerror(exc.errno)}{advice}")


def classify(exc: BaseException) -> tuple[int, str, bool]:
    """``(exit status, message, collective)`` for an exception that reached the CLI.

    ``collective`` is True when every rank is known to have raised the same error, so rank 0
    alone reports it and no rank needs to abort the others.
    """
    grid_module = sys.modules.get("parallel.grid")  # never import (and start) MPI here
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted", False
    if isinstance(exc, BrokenPipeError):
        return EXIT_BROKEN_PIPE, "", False
    if isinstance(exc, StorageError) and "free space" in str(exc).lower():
        return StorageError.exit_code, f"error: {exc}", True  # a complete message already
    if isinstance(exc, StorageError) or is_storage_error(exc):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return (
            StorageError.exit_code,
            f"error: cannot write{where}: {text}; free space or raise the quota (or choose "
            "another output.directory) and run again: a run resumes from its last checkpoint",
            isinstance(exc, StorageError),
        )
    if isinstance(exc, TrivhmcError):
        prefix = "" if isinstance(exc, NotAvailableError) else "error: "
        return exc.exit_code, f"{prefix}{exc}", True
    if grid_module is not None and isinstance(exc, grid_module.GridError):  # on every rank
        return LayoutError.exit_code, f"error: {exc}", True
    settings_module = sys.modules.get("parallel.settings")
    if settings_module is not None and isinstance(exc, settings_module.SettingError):
        return InputError.exit_code, f"error: {exc}", True  # the same environment everywhere
    io_errors = sys.modules.get("app.io.errors")
    if io_errors is not None and isinstance(exc, io_errors.ConfigFormatError):
        # a corrupt or foreign file is bad input; raised where it was read (collective
        # where every rank reads it: the callers that know make it an InputError)
        return InputError.exit_code, f"error: {exc}", False
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in OPTIONAL_MODULES:
            extra, purpose = OPTIONAL_MODULES[top]
            err = MissingDependency(top, extra, purpose.capitalize())
            return err.exit_code, f"error: {err}", False
    return EXIT_INTERNAL, f"internal error: {type(exc).__name__}: {exc}", False


# ---------------------------------------------------------------------- MPI rank
_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PALS_RANKID", "SLURM_PROCID")
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PALS_SIZE", "SLURM_NTASKS")


def _mpi_world():
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        return mpi.COMM_WORLD
    return None


def world_rank() -> int:
    """This process's rank in MPI_COMM_WORLD, without initialising MPI (launcher variables
    when mpi4py has not been started yet)."""
    comm = _mpi_world()
    if comm is not None:
        return comm.Get_rank()
    for name in _RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def world_size() -> int:
    """Number of MPI processes (1 without MPI)."""
    comm = _mpi_world()
    if comm is not None:
        return comm.Get_size()
    for name in _SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1
