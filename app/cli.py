"""The ``trivhmc`` command line: ``trivhmc <command> ...``.

Each subcommand lives in its own module ``app/commands/<name>.py`` (see
:mod:`app.commands`); only the chosen one is imported. Exit status: 0 success, 2 bad input
(deck, file or option; one clear message, no traceback), 1 anything else; a subcommand may
define more (``run --status`` exits 3 while a run is incomplete).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .errors import InputError, NotAvailableError
from .io.errors import StorageError

#: subcommand -> one-line help (the module is app.commands.<name>)
COMMANDS = {
    "run": "generate an ensemble from a deck (resumes from the last checkpoint)",
    "train": "train a flow model for a deck's theory",
    "analyze": "error analysis of a run: mean, error, tau_int (Gamma method)",
    "info": "describe a configuration file (ILDG, NERSC, HDF5)",
    "convert": "convert a configuration between ILDG, NERSC and HDF5",
    "jobscript": "render a batch script (Aurora, Polaris, Frontier, local) for a deck",
    "validate": "check an input deck",
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``trivhmc`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help / --version (0)
        return int(exc.code or 0)
    try:
        return int(args._main(args) or 0)
    except InputError as exc:
        print(f"trivhmc {args.command}: error: {exc}", file=sys.stderr)
        return InputError.exit_code
    except NotAvailableError as exc:
        print(f"trivhmc {args.command}: {exc}", file=sys.stderr)
        return NotAvailableError.exit_code
    except StorageError as exc:  # full disk, quota, I/O error: one message (issue 12)
        from mpi4py import MPI

        if MPI.COMM_WORLD.Get_rank() == 0:  # the same error is raised on every rank
            print(f"trivhmc {args.command}: error: {exc}", file=sys.stderr)
        return StorageError.exit_code
    except KeyboardInterrupt:
        print(f"trivhmc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
