"""The ``trivhmc`` command line: ``trivhmc <command> ...``.

Each subcommand lives in its own module ``app/commands/<name>.py`` (see
:mod:`app.commands`); only the chosen one is imported. Every failure ends in one message
(from world rank 0 under MPI) and an exit status naming its kind: the table is in
:mod:`app.errors` and docs/errors.md. ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Sequence

from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    classify,
    world_rank,
    world_size,
)

#: subcommand -> one-line help (the module is app.commands.<name>)
COMMANDS = {
    "run": "generate an ensemble from a deck (resumes from the last checkpoint)",
    "train": "train a flow model for a deck's theory",
    "analyze": "error analysis of a run: mean, error, tau_int (Gamma method)",
    "info": "describe a configuration file (ILDG, NERSC, HDF5)",
    "convert": "convert a configuration between ILDG, NERSC and HDF5",
    "jobscript": "render a batch script (Aurora, Polaris, Frontier, local) for a deck",
    "validate": "check an input deck",
    "measure": "measure saved configurations: flow scales t0/w0, Q(t), loops, correlators",
    "models": "model registry: list, show, verify, export, import trained models",
}


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("trivhmc")
    except Exception:  # not installed as a distribution
        return "unknown"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of ``command`` only (others are listed by name)."""
    parser = argparse.ArgumentParser(
        prog="trivhmc",
        description="Trivialized-action HMC for lattice field theory, distributed over MPI.",
    )
    parser.add_argument("--version", action="version", version=f"trivhmc {_version()}")
    parser.add_argument(
        "--debug", action="store_true", help="show Python tracebacks (also TRIVHMC_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        if name == command:
            module = importlib.import_module(f"app.commands.{name}")
            p = sub.add_parser(
                name,
                help=help_text,
                description=module.__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
            module.add_arguments(p)
            p.set_defaults(_main=module.main)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, ``trivhmc COMMAND: warning: ...``, from world rank 0 only."""
    if world_rank() == 0:
        print(f"trivhmc {_current[0]}: warning: {message}", file=sys.stderr)


_current = ["?"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trivhmc`` console script; returns the exit status.

    Every exception is mapped to one message and an exit status by
    :func:`app.errors.classify` (table in docs/errors.md). ``--debug`` (anywhere on the
    command line, or ``TRIVHMC_DEBUG=1``) adds the Python traceback on every rank.

    This module imports nothing heavy at its top: torch, MPI and the subcommand are imported
    here, inside the handler, so that Ctrl-C during start-up (``import torch`` takes seconds)
    ends with the one-line ``interrupted`` (status 130) like Ctrl-C at any later point.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    _current[0] = command if command in COMMANDS else "?"
    try:
        return _main(argv, command, debug)
    except KeyboardInterrupt as exc:  # while importing or parsing, before the command ran
        return _report(exc, _current[0], debug)


def _main(argv: list[str], command: str | None, debug: bool) -> int:
    """:func:`main` after the ``--debug`` flag is taken out."""
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help / --version (0)
        return int(exc.code or 0)
    _current[0] = args.command
    from parallel.memory import keep_freed_memory  # imports torch (parallel/__init__.py)
    from parallel.settings import SettingError, check_switches, flag

    try:  # the environment's switches: a bad value is bad input (parallel/settings.py)
        check_switches()
        debug = flag("TRIVHMC_DEBUG", False) or debug
        keep_freed_memory()  # reuse freed field-sized arrays (parallel/memory.py)
    except SettingError as exc:
        return _report(exc, args.command, debug)
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _show_warning
        try:
            return int(args._main(args) or 0)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes an exit status
            if isinstance(exc, SystemExit):
                raise
            return _report(exc, args.command, debug)


def _report(exc: BaseException, command: str, debug: bool) -> int:
    """Print ``exc`` once and return its exit status (see :func:`app.errors.classify`)."""
    code, message, collective = classify(exc)
    if code == EXIT_BROKEN_PIPE:
        # the reader went away: silence the interpreter's own flush of stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return code
    collective = collective or code == EXIT_INTERRUPTED
    rank, size = world_rank(), world_size()
    if debug:
        traceback.print_exception(exc)
    if rank == 0 or not collective:
        where = f" (rank {rank})" if size > 1 and not collective else ""
        hint = "; rerun with --debug for the traceback" if code == EXIT_INTERNAL else ""
        print(f"trivhmc {command}{where}: {message}{hint}", file=sys.stderr)
    sys.stderr.flush()
    if not collective and size > 1:
        # only this rank failed: the others would wait forever in their next collective call
        mpi = sys.modules.get("mpi4py.MPI")
        if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
            mpi.COMM_WORLD.Abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
